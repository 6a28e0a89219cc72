"""Training speed: BasicSR training iterations per second of LKSMN and SAFMN, per training path.

Each configuration is a real ``LKSMNModel`` (the step ``lksmn-train`` runs: forward, L1 loss, backward, finite
check, Adam step) built from inline options, for LKSMN (default network) and SAFMN (spandrel's class, as
``train_peer.py`` trains it). Paths: fp32 NCHW (BasicSR's own), fp32 channels_last, bf16 autocast
channels_last (only where the CPU has native bf16, or on CUDA), for LKSMN also bf16 with LKCD's depthwise convs
kept in fp32 (``train.lkcd_depthwise_fp32``), and ``torch.compile`` of the channels_last fp32 path
(``--compile``). The configurations are timed in interleaved rounds in one process (each round
runs every configuration for ``--iters`` steps after its warm-up), and the median of the rounds is reported.

Without ``--data`` the batches are random tensors made in advance (the step alone). With ``--data DIR``
(an ``lksmn-prepare open-photos`` folder) each configuration also runs from BasicSR's LMDB dataloader with
its workers (the step with data loading), as ``lksmn-train`` would.

    .venv/bin/python benchmarks/train_speed.py --json benchmarks/results/train_speed_cpu.json \\
        --markdown benchmarks/results/train_speed_cpu.md [--data datasets/openphotos] [--patches 16 32]

Rows marked "(default)" are the path ``lksmn-train`` takes by default for that network and batch shape; on a
CPU with native bf16 a run times its candidate paths itself, and the mark applies its rule to this file's own
random-tensor timings. The markdown table goes verbatim into docs/training.md.
"""
import argparse
import contextlib
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lksmn_arch  # noqa: E402,F401  (compatibility fixes before basicsr; registers LKSMN)

from report import save_report  # noqa: E402
from lksmn_arch.models.lksmn_model import LKSMNModel  # noqa: E402
from lksmn_arch.models.training_path import choose_path, path_is_timed, training_path  # noqa: E402
from lksmn_arch.utils.cpus import cpu_has_native_bf16, cpu_label  # noqa: E402

NETWORKS = {'LKSMN': {'type': 'LKSMN'}, 'SAFMN': {'type': 'SpandrelSAFMN'}}
LKCD_FP32_PATH = 'bf16 channels_last, LKCD fp32'  # LKCD's depthwise convs in fp32 under autocast (LKSMN only)


def paths_for(device: str, compile_too: bool) -> Dict[str, Dict[str, Any]]:
    """The training paths that make sense on ``device``: name -> train options."""
    paths = {'fp32 NCHW': {'precision': 'fp32', 'channels_last': False},
             'fp32 channels_last': {'precision': 'fp32', 'channels_last': True}}
    if (device == 'cpu' and cpu_has_native_bf16()) or (device == 'cuda' and torch.cuda.is_bf16_supported()):
        paths['bf16 channels_last'] = {'precision': 'bf16', 'channels_last': True, 'lkcd_depthwise_fp32': False}
        paths[LKCD_FP32_PATH] = {'precision': 'bf16', 'channels_last': True, 'lkcd_depthwise_fp32': True,
                                 'lkcd_only': True}
    if compile_too:
        paths['fp32 channels_last compiled'] = {'precision': 'fp32', 'channels_last': True, 'compile': True}
    return paths


def auto_path_name(device: str) -> str:
    """The name (as in ``paths_for``) of the path ``train.precision: auto`` and ``train.channels_last: auto``
    take on ``device``: what ``lksmn-train`` runs by default. On a CPU with native bf16 the path is timed by
    each run (``lksmn_arch.models.training_path``): the rows marked ``default`` say which path that is here."""
    path = training_path({}, device)
    layout = 'channels_last' if path.channels_last else 'NCHW'
    if path_is_timed({}, device):
        return f'bf16 or fp32 {layout}, timed per run'
    return f'{"bf16" if path.autocast_dtype == torch.bfloat16 else "fp32"} {layout}'


def mark_default_paths(rows: List[Dict[str, Any]], device: str) -> None:
    """Set ``default`` on each row: whether it is the path lksmn-train takes by default for its network and batch
    shape. Where the path is timed per run, the rule of ``training_path`` (``choose_path``) is applied to this
    benchmark's own random-tensor timings of the paths a run times (what the run's timer measures: no data
    loading)."""
    timed = path_is_timed({}, device)
    static = None if timed else auto_path_name(device)
    shape = ('network', 'threads', 'batch', 'lr_patch')
    timings = {(tuple(r[k] for k in shape), r['path']): r['ms_per_iter'] for r in rows if r['loader'] == 'random tensors'}
    candidates = {'fp32 channels_last': (None, False), 'bf16 channels_last': (torch.bfloat16, False),
                  LKCD_FP32_PATH: (torch.bfloat16, True)}
    for r in rows:
        if not timed:
            r['default'] = r['path'] == static
            continue
        group = tuple(r[k] for k in shape)
        seconds = {c: timings[(group, name)] for name, c in candidates.items() if (group, name) in timings}
        chosen = choose_path(seconds) if any(c[0] is not None for c in seconds) else (None, False)
        r['default'] = candidates.get(r['path']) == chosen


def model_options(network: Dict[str, Any], path: Dict[str, Any], scale: int, folder: Path,
                  device: str) -> Dict[str, Any]:
    """Inline BasicSR options of a training LKSMNModel (Adam 1e-3, L1, no EMA, no pretrained weights)."""
    train = {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
             'scheduler': {'type': 'MultiStepLR', 'milestones': [10 ** 9], 'gamma': 0.5},
             'total_iter': 10 ** 9, 'warmup_iter': -1,
             'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
             **{key: path[key] for key in ('precision', 'channels_last', 'lkcd_depthwise_fp32') if key in path}}
    return {'name': 'train_speed', 'model_type': 'LKSMNModel', 'scale': scale, 'is_train': True, 'dist': False,
            'rank': 0, 'world_size': 1, 'num_gpu': 1 if device == 'cuda' else 0,
            'network_g': {**network, 'upscale': scale}, 'train': train, 'val': None,
            'logger': {'print_freq': 10 ** 9, 'save_checkpoint_freq': 10 ** 9, 'use_tb_logger': False},
            'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                     'models': str(folder / 'models'), 'training_states': str(folder / 'states'),
                     'experiments_root': str(folder), 'log': str(folder), 'visualization': str(folder)}}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """BasicSR prints the network and its settings when a model is built: keep them off the table."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def build(network: str, path: Dict[str, Any], scale: int, folder: Path, device: str) -> LKSMNModel:
    """A training LKSMNModel for ``network`` on ``path``."""
    (folder / 'models').mkdir(parents=True, exist_ok=True)
    (folder / 'states').mkdir(parents=True, exist_ok=True)
    with quiet():
        model = LKSMNModel(model_options(NETWORKS[network], path, scale, folder, device))
    if path.get('compile'):
        # static shapes: each configuration has one input shape, and inductor's automatic dynamic shapes (after a
        # second shape of the same forward) fail on this network in torch 2.13
        model.net_g = torch.compile(model.net_g, dynamic=False)
    return model


def random_batches(count: int, batch: int, lr_patch: int, scale: int, seed: int = 0) -> List[Dict[str, torch.Tensor]]:
    """Batches shaped like BasicSR's paired crops (values in [0, 1])."""
    generator = torch.Generator().manual_seed(seed)
    return [{'lq': torch.rand(batch, 3, lr_patch, lr_patch, generator=generator),
             'gt': torch.rand(batch, 3, lr_patch * scale, lr_patch * scale, generator=generator)}
            for _ in range(count)]


def lmdb_batches(data: Path, batch: int, lr_patch: int, scale: int, workers: int) -> Iterator[Dict[str, Any]]:
    """BasicSR's PairedImageDataset over the open-photos training LMDBs, with its dataloader, forever."""
    from basicsr.data import build_dataloader, build_dataset
    options = {'name': 'openphotos_train', 'type': 'PairedImageDataset', 'phase': 'train', 'scale': scale,
               'dataroot_gt': str(data / 'openphotos_train_HR_sub.lmdb'),
               'dataroot_lq': str(data / f'openphotos_train_LR_bicubic_X{scale}_sub.lmdb'),
               'io_backend': {'type': 'lmdb'}, 'gt_size': lr_patch * scale, 'use_hflip': True, 'use_rot': True,
               'num_worker_per_gpu': workers, 'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': 1}
    with quiet():
        dataset = build_dataset(options)
        loader = build_dataloader(dataset, options, num_gpu=0, dist=False, sampler=None, seed=0)
    while True:
        yield from loader


def step(model: LKSMNModel, batch: Dict[str, Any], iteration: int) -> None:
    model.feed_data(batch)
    model.optimize_parameters(iteration)


def time_configs(configs: Dict[str, Dict[str, Any]], rounds: int, iters: int, warmup: int) -> Dict[str, List[float]]:
    """Seconds per iteration of each configuration, one value per round, the rounds interleaved. Each
    configuration's ``skipped`` counts the timed steps that LKSMNModel skipped as non-finite (read after the
    round's clock stops: a skipped step has no optimizer step, so a row with skips is not a clean timing)."""
    for config in configs.values():
        for i in range(warmup):
            step(config['model'], next(config['batches']), i + 1)
        config['skipped'] = 0
    times: Dict[str, List[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, config in configs.items():
            model, batches = config['model'], config['batches']
            skipped_before = model.skipped_steps
            started = time.perf_counter()
            for i in range(iters):
                step(model, next(batches), i + 1)
            if model.device.type == 'cuda':
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - started) / iters)
            config['skipped'] += model.skipped_steps - skipped_before
    return times


def cycle(batches: List[Dict[str, torch.Tensor]], device: str) -> Iterator[Dict[str, torch.Tensor]]:
    moved = [{k: v.to(device) for k, v in b.items()} for b in batches]
    while True:
        yield from moved


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    """Every (network, path, patch, threads, loader) configuration, timed in interleaved rounds."""
    device = args.device
    paths = paths_for(device, args.compile)
    rows = []
    with tempfile.TemporaryDirectory(prefix='train_speed_') as temp:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch_size, patch in [(b, p) for b in args.batch for p in args.patches]:
                loaders = ['random tensors'] + (['LMDB dataloader'] if args.data else [])
                for loader in loaders:
                    configs: Dict[str, Dict[str, Any]] = {}
                    for network in args.networks:
                        for path_name, path in paths.items():
                            if path.get('lkcd_only') and network != 'LKSMN':
                                continue  # no LKCD in this network: the same path as plain bf16
                            folder = Path(temp) / f'{network}_{len(rows)}_{len(configs)}'
                            model = build(network, path, args.scale, folder, device)
                            if loader == 'random tensors':
                                batches = cycle(random_batches(4, batch_size, patch, args.scale), device)
                            else:
                                batches = lmdb_batches(args.data, batch_size, patch, args.scale, args.workers)
                            configs[f'{network}|{path_name}'] = {'model': model, 'batches': batches}
                    print(f'threads {threads}, batch {batch_size}, LR patch {patch}, {loader}: {len(configs)} configurations, '
                          f'{args.rounds} rounds of {args.iters} iterations', flush=True)
                    times = time_configs(configs, args.rounds, args.iters, args.warmup)
                    for name, values in times.items():
                        network, path_name = name.split('|')
                        median = statistics.median(values)
                        rows.append({'network': network, 'path': path_name, 'threads': threads, 'lr_patch': patch,
                                     'batch': batch_size, 'loader': loader, 'ms_per_iter': round(median * 1000, 2),
                                     'iters_per_s': round(1 / median, 2),
                                     'rounds_ms': [round(v * 1000, 2) for v in values],
                                     'skipped_steps': configs[name]['skipped']})
                        print(f'  {network:6s} {path_name:32s} {median * 1000:8.1f} ms/iter', flush=True)
                    del configs
    mark_default_paths(rows, device)
    return {'device': device, 'cpu': cpu_label(), 'native_bf16': cpu_has_native_bf16(),
            'default_path': auto_path_name(device),
            'torch': torch.__version__, 'python': platform.python_version(), 'scale': args.scale,
            'rounds': args.rounds, 'iters': args.iters, 'warmup': args.warmup,
            'command': 'python benchmarks/train_speed.py ' + ' '.join(sys.argv[1:]), 'rows': rows}


def format_table(results: Dict[str, Any]) -> str:
    """Markdown: one row per configuration, with the speed-up over the same network's fp32 NCHW step."""
    lines = [f'Measured on {results["cpu"] if results["device"] == "cpu" else results["device"]} '
             f'(native bf16: {"yes" if results["native_bf16"] else "no"}), torch {results["torch"]}, x{results["scale"]}; '
             f'median of {results["rounds"]} interleaved rounds of {results["iters"]} '
             f'iterations. Command: `{results["command"]}`', '',
             '| network | path | threads | batch | LR patch | batches | ms / iteration | iterations / s | vs fp32 NCHW |',
             '|---|---|---:|---:|---:|---|---:|---:|---:|']
    key = ('network', 'threads', 'batch', 'lr_patch', 'loader')
    base = {tuple(r[k] for k in key): r['ms_per_iter'] for r in results['rows'] if r['path'] == 'fp32 NCHW'}
    for r in results['rows']:
        reference = base.get(tuple(r[k] for k in key))
        ratio = f'{reference / r["ms_per_iter"]:.2f}x' if reference else ''
        path = f'{r["path"]} (default)' if r.get('default') else r['path']
        lines.append(f'| {r["network"]} | {path} | {r["threads"]} | {r["batch"]} | {r["lr_patch"]} | {r["loader"]} | '
                     f'{r["ms_per_iter"]:.1f} | {r["iters_per_s"]:.1f} | {ratio} |')
    skipped = [r for r in results['rows'] if r.get('skipped_steps')]
    if skipped:
        timed = results['rounds'] * results['iters']
        lines += ['', 'Timed steps that LKSMNModel skipped as non-finite (no optimizer step): ' + '; '.join(
            f'{r["network"]} {r["path"]}, patch {r["lr_patch"]}, {r["loader"]}: {r["skipped_steps"]} of {timed}'
            for r in skipped) + '.']
    return '\n'.join(lines) + '\n'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='train_speed.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--networks', nargs='+', default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument('--patches', nargs='+', type=int, default=[16, 32], help='LR patch sizes (default 16 32)')
    parser.add_argument('--threads', nargs='+', type=int, default=[torch.get_num_threads()],
                        help='torch threads (default: all this process may use)')
    parser.add_argument('--batch', nargs='+', type=int, default=[8], help='batch sizes (default 8)')
    parser.add_argument('--scale', type=int, default=4, choices=(2, 3, 4))
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--iters', type=int, default=10, help='iterations per configuration per round')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--compile', action='store_true', help='also time torch.compile of the channels_last path')
    parser.add_argument('--data', type=Path, help='an lksmn-prepare open-photos folder: also time with its LMDBs')
    parser.add_argument('--workers', type=int, default=2, help='dataloader workers with --data (default 2)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--json', type=Path, help='write the results here')
    parser.add_argument('--markdown', type=Path, help='write the table here')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data and not (args.data / 'openphotos_train_HR_sub.lmdb').is_dir():
        print(f'train_speed.py: error: --data {args.data} has no openphotos_train_HR_sub.lmdb '
              '(run lksmn-prepare open-photos --out DIR)', file=sys.stderr)
        return 2
    if 'SAFMN' in args.networks:
        from equal_budget import register_peers
        if not register_peers():
            print('train_speed.py: error: SAFMN needs spandrel (pip install -e ".[bench]")', file=sys.stderr)
            return 2
    results = measure(args)
    save_report(results, args.json, format_table(results), args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
