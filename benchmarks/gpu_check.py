"""One prepared command that proves every CUDA path of lksmn_arch on a GPU machine, and measures it.

    python benchmarks/gpu_check.py --out $OUT                 # on the GPU machine (about 6 minutes)
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc    # every step on the CPU, tiny sizes (a test runs it)

Steps, one line each as it goes (a run cut short still says how far it got), and the report rewritten after
every step (``gpu_check.json``, ``gpu_check.md`` in ``--out``):

  1 environment  GPU name and memory, driver, torch, CUDA, cuDNN, Python
  2 training     LKSMN x4 (default) and SAFMN (spandrel's class registered in BasicSR) through BasicSR's train
                 pipeline from an option file, one recipe (num_gpu auto, prefetch_mode cuda, batch 32, LR
                 patches 48, EMA 0.999): iterations per second after warm-up, peak CUDA memory, loss finite;
                 then the same in channels_last
  3 resume       SIGTERM at iteration k leaves a state for k; --auto_resume continues at k+1 with it
  4 launcher     torchrun --nproc_per_node=<GPUs> -m lksmn_arch.cli.train --launcher pytorch (NCCL), a few iterations
  5 latency      LKSMN (inference form) and SAFMN in fp32, fp16, bf16; eager, channels_last, torch.compile;
                 320x180 and 960x540 -> x4, batch 1 and 8; CUDA-event timing, interleaved, medians, peak
                 memory; a tiled 4K output through Upscaler
  6 precision    fp16 and bf16 against fp32 on real photos with the shipped model: PSNR change, largest
                 difference, non-finite values
  7 cli          lksmn-upscale --device cuda --precision fp16 on a folder, against its fp32 output

The training data is made in the run from scikit-image's photos (no dataset travels). A step that fails is
reported with its error and the run goes on; the exit status is 1 if any step failed.

Preparing the GPU machine (Python 3.12 with torch, torchvision, numpy, opencv, scikit-image, einops, onnx,
safetensors, pyyaml, tqdm, scipy, tensorboard; it lacks basicsr, lmdb, spandrel, addict, yapf, future and
this project, and reaches no index). On this machine, once:

    bash scripts/gpu_wheels.sh      # basicsr built from its sdist, the rest downloaded for CPython 3.12, into .whl/
                                    # (1.6 MB; checked to install into a clean Python 3.12 with --no-index)

The one command on the GPU machine (the device tool: the working tree travels, carry [".whl"], timeout 540 s;
this project itself runs from the tree through PYTHONPATH):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \\
      export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && python3 benchmarks/gpu_check.py --out $OUT

Then commit ``$OUT/gpu_check.json`` and ``.md`` as ``benchmarks/results/gpu_<gpu>.json`` / ``.md``.
"""
import argparse
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import lksmn_arch  # noqa: E402,F401  (compatibility fixes before basicsr)

STEPS = ('environment', 'training', 'resume', 'launcher', 'latency', 'precision', 'cli')
SCALE = 4


class Settings:
    """Sizes and counts of a full run (GPU) or a dry run (CPU, tiny)."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.device = 'cpu' if dry_run else 'cuda'
        self.batch = 2 if dry_run else 32
        self.lr_patch = 8 if dry_run else 48
        self.warmup_iters = 2 if dry_run else 50
        self.timed_iters = 4 if dry_run else 300
        self.sizes = [(18, 32)] if dry_run else [(180, 320), (540, 960)]  # LR (height, width)
        self.batches = [1, 2] if dry_run else [1, 8]
        self.precisions = ['fp32', 'bf16'] if dry_run else ['fp32', 'fp16', 'bf16']
        self.rounds = 2 if dry_run else 10
        self.tile_input = (60, 100) if dry_run else (540, 960)  # the tiled "4K" output
        self.tile = 32 if dry_run else 256
        self.prefetch = 'cpu' if dry_run else 'cuda'
        self.resume_at = 3 if dry_run else 20
        self.budget_s = 900 if dry_run else 330  # latency rows past this point of the run are skipped, named


# ----------------------------------------------------------------------------------------------------
# Reporting


class Report:
    """Results per step, written to JSON and Markdown after every step."""

    def __init__(self, out: Path, settings: Settings) -> None:
        self.out, self.settings, self.started = out, settings, time.time()
        self.data: Dict[str, Any] = {'dry_run': settings.dry_run, 'steps': {}}

    def record(self, step: str, status: str, seconds: float, result: Any) -> None:
        self.data['steps'][step] = {'status': status, 'seconds': round(seconds, 1), 'result': result}
        self.data['total_seconds'] = round(time.time() - self.started, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / 'gpu_check.json').write_text(json.dumps(self.data, indent=1, default=str) + '\n')
        (self.out / 'gpu_check.md').write_text(markdown(self.data))

    @property
    def elapsed(self) -> float:
        return time.time() - self.started


def _table(rows: List[Dict[str, Any]], columns: Sequence[str]) -> List[str]:
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for row in rows:
        lines.append('| ' + ' | '.join(_cell(row.get(c)) for c in columns) + ' |')
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.3g}' if abs(value) < 100 else f'{value:.0f}'
    return '' if value is None else str(value)


def markdown(data: Dict[str, Any]) -> str:
    """The report as Markdown: one section per step, its status, and its table."""
    lines = ['# gpu_check' + (' (dry run on the CPU: tiny sizes, no figure means anything)' if data['dry_run'] else ''),
             '']
    for step in STEPS:
        entry = data['steps'].get(step)
        if entry is None:
            lines += [f'## {step}: not run', '']
            continue
        lines += [f'## {step}: {entry["status"]} ({entry["seconds"]} s)', '']
        result = entry['result']
        if isinstance(result, list) and result and isinstance(result[0], dict):
            columns = list(dict.fromkeys(k for row in result for k in row))
            lines += _table(result, columns)
        elif isinstance(result, dict):
            lines += [f'- {k}: {_cell(v)}' for k, v in result.items()]
        else:
            lines.append(str(result))
        lines.append('')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------------
# Steps


def step_environment(settings: Settings, work: Path) -> Dict[str, Any]:
    info: Dict[str, Any] = {'python': platform.python_version(), 'torch': torch.__version__,
                            'cuda (torch)': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),
                            'lksmn_arch': lksmn_arch.__version__, 'cpu cores': os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({'gpu': props.name, 'gpus': torch.cuda.device_count(),
                     'gpu memory (GiB)': round(props.total_memory / 2**30, 1),
                     'compute capability': f'{props.major}.{props.minor}'})
        try:
            info['driver'] = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info['driver'] = 'nvidia-smi not found'
    elif not settings.dry_run:
        raise RuntimeError('torch sees no CUDA device')
    return info


def make_training_data(work: Path, settings: Settings) -> Dict[str, Path]:
    """x4 sub-images of scikit-image's training photos and the demo's held-out pairs (no download)."""
    from lksmn_arch.data.sample_photos import TEST_PHOTOS, TRAIN_PHOTOS, write_photos
    from lksmn_arch.data.prepare import SubImageSettings, prepare_benchmark, prepare_div2k
    root = work / 'data'
    if not (root / 'done').is_file():
        photos = TRAIN_PHOTOS[:3] if settings.dry_run else TRAIN_PHOTOS
        write_photos(root / 'train_HR', photos)
        write_photos(root / 'test_HR', TEST_PHOTOS[:1] if settings.dry_run else TEST_PHOTOS)
        crop = settings.lr_patch * SCALE * 2
        with _quiet():
            prepare_div2k([root / 'train_HR'], root, 'gc', SubImageSettings(scales=(SCALE,), crop=crop, step=crop),
                          workers=1, lmdb=False)
            prepare_benchmark(root / 'test_HR', root / 'test', scales=(SCALE,), workers=1)
        (root / 'done').write_text('')
    return {'gt': root / 'gc_HR_sub', 'lq': root / f'gc_LR_bicubic_X{SCALE}_sub',
            'test_gt': root / 'test' / f'GTmod{SCALE}', 'test_lq': root / 'test' / f'LRbicx{SCALE}'}


class _quiet:
    """Send stdout to /dev/null for noisy preparation steps."""

    def __enter__(self):
        self.saved, sys.stdout = sys.stdout, open(os.devnull, 'w')

    def __exit__(self, *exc):
        sys.stdout.close()
        sys.stdout = self.saved


def train_options(name: str, network: Dict[str, Any], data: Dict[str, Path], settings: Settings,
                  total_iter: int, print_freq: int, save_every: int) -> Dict[str, Any]:
    """One recipe for every network: BasicSR option dict."""
    return {
        'name': name, 'model_type': 'LKSMNModel', 'scale': SCALE, 'num_gpu': 'auto', 'manual_seed': 0,
        'datasets': {'train': {
            'name': 'photos', 'type': 'PairedImageDataset', 'dataroot_gt': str(data['gt']),
            'dataroot_lq': str(data['lq']), 'io_backend': {'type': 'disk'}, 'gt_size': settings.lr_patch * SCALE,
            'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': 0 if settings.dry_run else 6,
            'batch_size_per_gpu': settings.batch, 'dataset_enlarge_ratio': 200, 'prefetch_mode': settings.prefetch,
            'pin_memory': not settings.dry_run}},
        'network_g': network,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [total_iter], 'restart_weights': [1],
                                'eta_min': 1e-6},
                  'total_iter': total_iter, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'logger': {'print_freq': print_freq, 'save_checkpoint_freq': save_every, 'use_tb_logger': False},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


NETWORKS = {'LKSMN': {'type': 'LKSMN', 'upscale': SCALE}, 'SAFMN': {'type': 'SpandrelSAFMN', 'upscale': SCALE}}
_LOG_LINE = re.compile(r'iter:\s*([\d,]+).*?time \(data\): ([\d.]+) \(([\d.]+)\)\].*?l_pix: ([-+\w.]+)')


def run_train(opt: Dict[str, Any], work: Path, extra: Sequence[str] = (), channels_last: bool = False,
              launcher: Optional[List[str]] = None, wait: bool = True, timeout: float = 600):
    """Train in a fresh process (this script's internal --train mode: peers registered, peak memory reported)."""
    path = work / f'{opt["name"]}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    command = [sys.executable, str(Path(__file__).resolve()), '--internal-train', str(path)]
    if launcher:
        command = launcher + [str(Path(__file__).resolve()), '--internal-train', str(path)]
    command += ['--channels-last'] * channels_last + list(extra)
    env = _child_env()
    if not wait:
        return subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f'training exited with {done.returncode}: {_tail(done.stdout + done.stderr)}')
    return done


def _child_env() -> Dict[str, str]:
    """The environment of child processes: this tree first on PYTHONPATH, the rest of PYTHONPATH kept."""
    kept = os.environ.get('PYTHONPATH', '')
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), kept) if p))


def _tail(text: str, lines: int = 3) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return ' / '.join(kept[-lines:])[-600:]


def _train_log(work: Path, name: str) -> str:
    logs = sorted((work / 'experiments' / name).glob('train_*.log'))
    return logs[-1].read_text() if logs else ''


def internal_train(opt_path: str, rest: Sequence[str], channels_last: bool) -> int:
    """The child of run_train: peers registered, optional channels_last, peak CUDA memory printed at the end."""
    from equal_budget import register_peers

    from lksmn_arch.models.lksmn_model import LKSMNModel
    from lksmn_arch.training.pipeline import cli, run_training
    register_peers()
    if channels_last:
        original_init, original_feed = LKSMNModel.__init__, LKSMNModel.feed_data

        def init(self, opt):
            original_init(self, opt)
            self.net_g.to(memory_format=torch.channels_last)
            if hasattr(self, 'net_g_ema'):
                self.net_g_ema.to(memory_format=torch.channels_last)

        def feed(self, data):
            original_feed(self, data)
            self.lq = self.lq.contiguous(memory_format=torch.channels_last)

        LKSMNModel.__init__, LKSMNModel.feed_data = init, feed
    status = cli(run_training, 'gpu_check-train', ['-opt', opt_path, *rest])
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    print(f'GPU_CHECK_PEAK_BYTES {peak}', flush=True)
    return status


def step_training(settings: Settings, work: Path) -> List[Dict[str, Any]]:
    data = make_training_data(work, settings)
    rows = []
    total = settings.warmup_iters + settings.timed_iters
    print_freq = max(1, settings.timed_iters // 10) if not settings.dry_run else 1
    for layout in ('NCHW', 'channels_last'):
        for name, network in NETWORKS.items():
            run_name = f'train_{name}_{layout}'
            opt = train_options(run_name, network, data, settings, total, print_freq, save_every=10 ** 9)
            start = time.time()
            done = run_train(opt, work, channels_last=layout == 'channels_last')
            log = _train_log(work, run_name)
            entries = [(int(i.replace(',', '')), float(t), float(d), float(loss)) for i, t, d, loss in
                       _LOG_LINE.findall(log)]
            timed = [t for i, t, _, _ in entries if i > settings.warmup_iters] or [t for _, t, _, _ in entries]
            peak = re.search(r'GPU_CHECK_PEAK_BYTES (\d+)', done.stdout)
            rows.append({'network': name, 'layout': layout, 'iterations': total,
                         'iter/s': 1 / statistics.median(timed) if timed else None,
                         'data s/iter': statistics.median([d for _, _, d, _ in entries]) if entries else None,
                         'peak CUDA MiB': int(peak.group(1)) / 2**20 if peak else None,
                         'loss finite': bool(entries) and all(math.isfinite(loss) for *_, loss in entries),
                         'wall s': round(time.time() - start, 1)})
            if not rows[-1]['loss finite']:
                raise RuntimeError(f'{name} ({layout}): loss not finite or not logged: {_tail(log)}')
    return rows


def step_resume(settings: Settings, work: Path) -> Dict[str, Any]:
    data = make_training_data(work, settings)
    name = 'resume_LKSMN'
    opt = train_options(name, NETWORKS['LKSMN'], data, settings, total_iter=10 ** 6, print_freq=1,
                        save_every=10 ** 9)
    child = run_train(opt, work, wait=False)
    deadline = time.time() + (240 if settings.dry_run else 120)
    iteration = 0
    while time.time() < deadline and iteration < settings.resume_at:
        time.sleep(0.5)
        found = [int(i.replace(',', '')) for i, *_ in _LOG_LINE.findall(_train_log(work, name))]
        iteration = max(found, default=0)
    if iteration < settings.resume_at:
        child.kill()
        raise RuntimeError(f'training did not reach iteration {settings.resume_at} in time')
    os.killpg(child.pid, signal.SIGTERM)
    output, _ = child.communicate(timeout=120)
    states = sorted(int(p.stem) for p in (work / 'experiments' / name / 'training_states').glob('*.state'))
    if child.returncode != 128 + signal.SIGTERM or not states:
        raise RuntimeError(f'SIGTERM: exit {child.returncode}, states {states}: {_tail(output)}')
    stopped = states[-1]
    opt['train']['total_iter'] = stopped + 2
    run_train(opt, work, extra=['--auto_resume'])
    log = _train_log(work, name)
    resumed = re.search(r'Resuming training from epoch: \d+, iter: (\d+)', log)
    if not resumed or int(resumed.group(1)) != stopped:
        raise RuntimeError(f'--auto_resume did not resume from iteration {stopped}: {_tail(log)}')
    continued = [int(i.replace(',', '')) for i, *_ in _LOG_LINE.findall(log.split('Resuming training')[-1])]
    models = work / 'experiments' / name / 'models'
    return {'SIGTERM exit status': child.returncode, 'state saved at iteration': stopped,
            'resumed from iteration': int(resumed.group(1)), 'first iteration after resume': min(continued, default=None),
            'final checkpoint': (models / 'net_g_latest.pth').is_file()}


def step_launcher(settings: Settings, work: Path) -> Dict[str, Any]:
    data = make_training_data(work, settings)
    gpus = torch.cuda.device_count() if not settings.dry_run else 2
    opt = train_options('launcher_LKSMN', NETWORKS['LKSMN'], data, settings, total_iter=4, print_freq=1,
                        save_every=4)
    launcher = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={gpus}',
                f'--master_port={free_port()}']
    start = time.time()
    run_train(opt, work, extra=['--launcher', 'pytorch'], launcher=launcher)
    log = _train_log(work, 'launcher_LKSMN')
    backend = 'gloo' if settings.dry_run else 'nccl'
    return {'processes': gpus, 'backend': backend, 'iterations': 4, 'wall s': round(time.time() - start, 1),
            'final checkpoint': (work / 'experiments' / 'launcher_LKSMN' / 'models' / 'net_g_latest.pth').is_file(),
            'world size logged': bool(re.search(rf'world_size: {gpus}\b', log)) or gpus == 1}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for torchrun's --master_port)."""
    import socket
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def _networks() -> Dict[str, torch.nn.Module]:
    from spandrel.architectures.SAFMN import SAFMN

    from lksmn_arch import LKSMN
    from lksmn_arch.weights.shipped import shipped_models
    torch.manual_seed(0)
    lksmn = LKSMN(upscale=SCALE)
    if any(m.scale == SCALE for m in shipped_models()):
        from lksmn_arch.utils.checkpoint import build_model_from_checkpoint
        from lksmn_arch.weights.shipped import default_model
        lksmn = build_model_from_checkpoint(default_model(SCALE).path)[0]
    return {'LKSMN': lksmn.eval(), 'SAFMN': SAFMN(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=SCALE).eval()}


_DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def _forward(model: torch.nn.Module, precision: str, layout: str, device: str) -> Callable:
    from lksmn_arch.inference.latency import compile_for_inference, inference_form
    dtype = _DTYPES[precision]
    memory_format = torch.channels_last if layout != 'eager' else torch.contiguous_format
    net = inference_form(model).to(device=device, dtype=dtype, memory_format=memory_format)

    def run(x):
        return net(x.to(dtype=dtype, memory_format=memory_format))
    compiled = compile_for_inference(run) if layout == 'compile' else run

    def no_grad_run(x):
        with torch.no_grad():
            return compiled(x)
    return no_grad_run


def _timer(device: str) -> Callable[[Callable], float]:
    def timed(call: Callable) -> float:
        if device == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        began = time.perf_counter()
        call()
        return (time.perf_counter() - began) * 1000
    return timed


def step_latency(settings: Settings, work: Path, report: Report) -> List[Dict[str, Any]]:
    device, rows = settings.device, []
    timed = _timer(device)
    networks = _networks()
    for (height, width) in settings.sizes:
        for batch in settings.batches:
            x = torch.rand(batch, 3, height, width, device=device)
            forwards: Dict[tuple, Callable] = {}
            for name, model in networks.items():
                for precision in settings.precisions:
                    for layout in ('eager', 'channels_last', 'compile'):
                        # compile: fp32 and fp16 at the first size, batch 1 (each new shape compiles again)
                        if layout == 'compile' and (batch != 1 or (height, width) != settings.sizes[0]
                                                    or precision not in ('fp32', 'fp16')):
                            continue
                        key = (name, precision, layout)
                        if report.elapsed > settings.budget_s:
                            rows.append(_row(key, height, width, batch, note='skipped: time budget'))
                            continue
                        try:
                            forward = _forward(model, precision, layout, device)
                            forward(x)  # warm-up (and compilation)
                            if device == 'cuda':
                                torch.cuda.synchronize()
                            forwards[key] = forward
                        except Exception as error:  # noqa: BLE001  (a path that fails is a row, not a crash)
                            rows.append(_row(key, height, width, batch, note=f'failed: {_one_line(error)}'))
            times: Dict[tuple, List[float]] = {key: [] for key in forwards}
            for _ in range(settings.rounds):  # interleaved: every path once per round
                for key, forward in forwards.items():
                    times[key].append(timed(lambda: forward(x)))
            for key, forward in forwards.items():
                peak = None
                if device == 'cuda':
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    forward(x)
                    torch.cuda.synchronize()
                    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                rows.append(_row(key, height, width, batch, ms=statistics.median(times[key]), peak=peak))
            del forwards
            if device == 'cuda':
                torch.cuda.empty_cache()
    rows.append(_tiled_row(networks['LKSMN'], settings))
    return rows


def _row(key, height, width, batch, ms=None, peak=None, note=''):
    name, precision, layout = key
    return {'network': name, 'precision': precision, 'path': layout,
            'input': f'{width}x{height}', 'output': f'{width * SCALE}x{height * SCALE}', 'batch': batch,
            'median ms': ms, 'peak MiB': peak, 'note': note}


def _tiled_row(model, settings: Settings) -> Dict[str, Any]:
    from lksmn_arch.inference.upscaler import Upscaler
    height, width = settings.tile_input
    precision = 'fp16' if settings.device == 'cuda' else 'fp32'
    upscaler = Upscaler(model, tile=settings.tile, tile_pad=16, device=settings.device, precision=precision,
                        progress=False)
    image = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
    if settings.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = upscaler.upscale_image(image)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if settings.device == 'cuda' else None
    return {'network': 'LKSMN', 'precision': precision, 'path': f'Upscaler tiles {settings.tile}+16',
            'input': f'{width}x{height}', 'output': f'{out.shape[1]}x{out.shape[0]}', 'batch': 1,
            'median ms': seconds * 1000, 'peak MiB': peak, 'note': 'one call, tiled'}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0] if text else ""}'[:300]


def step_precision(settings: Settings, work: Path) -> List[Dict[str, Any]]:
    from basicsr.metrics import calculate_psnr

    from lksmn_arch.inference.upscaler import Upscaler
    data = make_training_data(work, settings)
    model = _networks()['LKSMN']
    runs = {p: Upscaler(model, device=settings.device, precision=p, progress=False) for p in settings.precisions}
    import cv2
    rows = []
    for gt_path in sorted(data['test_gt'].glob('*.png')):
        gt = cv2.imread(str(gt_path))[..., ::-1]
        lr = cv2.imread(str(data['test_lq'] / gt_path.name))[..., ::-1].astype(np.float32) / 255
        outputs = {p: run.upscale_image(lr) for p, run in runs.items()}
        reference = np.clip(np.rint(outputs['fp32'] * 255), 0, 255).astype(np.uint8)
        base = calculate_psnr(reference, gt, SCALE, input_order='HWC', test_y_channel=True)
        for precision, out in outputs.items():
            if precision == 'fp32':
                continue
            rounded = np.clip(np.rint(np.nan_to_num(out) * 255), 0, 255).astype(np.uint8)
            rows.append({'photo': gt_path.stem, 'precision': precision,
                         'PSNR change dB': calculate_psnr(rounded, gt, SCALE, input_order='HWC', test_y_channel=True)
                         - base, 'max abs diff': float(np.nanmax(np.abs(out - outputs['fp32']))),
                         'non-finite': int((~np.isfinite(out)).sum())})
    if any(r['non-finite'] for r in rows):
        raise RuntimeError(f'non-finite outputs: {rows}')
    return rows


CLI_TOLERANCE = {'max level difference': 8, 'PSNR vs fp32 (dB) at least': 40.0}


def step_cli(settings: Settings, work: Path) -> Dict[str, Any]:
    import cv2
    data = make_training_data(work, settings)
    precision = 'bf16' if settings.dry_run else 'fp16'
    checkpoint = work / 'cli_model.pth'  # the shipped model where there is one (see _networks)
    torch.save({'params': _networks()['LKSMN'].state_dict()}, checkpoint)
    outputs = {}
    for run_precision in ('fp32', precision):
        out = work / f'cli_{run_precision}'
        command = [sys.executable, '-m', 'lksmn_arch.cli.upscale', '-i', str(data['test_lq']), '-o', str(out),
                   '-m', str(checkpoint),
                   '--device', settings.device, '--precision', run_precision, '--quiet', '--overwrite',
                   '--backend', 'torch']
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=work, env=_child_env())
        if done.returncode != 0:
            raise RuntimeError(f'lksmn-upscale {run_precision} exited {done.returncode}: {_tail(done.stderr)}')
        outputs[run_precision] = {p.name: cv2.imread(str(p)).astype(np.float64) for p in sorted(out.iterdir())}
    worst_level, worst_psnr = 0.0, float('inf')
    for name, reference in outputs['fp32'].items():
        diff = outputs[precision][name] - reference
        worst_level = max(worst_level, float(np.abs(diff).max()))
        mse = float((diff ** 2).mean())
        worst_psnr = min(worst_psnr, float('inf') if mse == 0 else 10 * math.log10(255 ** 2 / mse))
    ok = worst_level <= CLI_TOLERANCE['max level difference'] and worst_psnr >= CLI_TOLERANCE['PSNR vs fp32 (dB) at least']
    result = {'command': f'lksmn-upscale --device {settings.device} --precision {precision}',
              'images': len(outputs['fp32']), 'max level difference': worst_level,
              'worst PSNR vs fp32 (dB)': worst_psnr, 'tolerance': json.dumps(CLI_TOLERANCE), 'within': ok}
    if not ok:
        raise RuntimeError(f'outside the tolerance: {result}')
    return result


# ----------------------------------------------------------------------------------------------------


def run(out: Path, settings: Settings, steps: Sequence[str]) -> int:
    report = Report(out, settings)
    work = Path(tempfile.mkdtemp(prefix='gpu_check_'))
    failed = 0
    functions = {'environment': step_environment, 'training': step_training, 'resume': step_resume,
                 'launcher': step_launcher, 'latency': lambda s, w: step_latency(s, w, report),
                 'precision': step_precision, 'cli': step_cli}
    for index, step in enumerate(steps, 1):
        start = time.time()
        print(f'[{index}/{len(steps)}] {step} ...', flush=True)
        try:
            result, status = functions[step](settings, work), 'ok'
        except Exception as error:  # noqa: BLE001  (each step reports its own failure; the run goes on)
            result, status = {'error': _one_line(error), 'where': traceback.format_exc().splitlines()[-3:]}, 'FAILED'
            failed += 1
        report.record(step, status, time.time() - start, result)
        print(f'[{index}/{len(steps)}] {step}: {status} in {time.time() - start:.0f} s'
              + (f' ({result["error"]})' if status == 'FAILED' else ''), flush=True)
    print(f'report: {out / "gpu_check.md"} ({report.elapsed:.0f} s in all; work folder {work})', flush=True)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='benchmarks/gpu_check.py', description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, required=False, help='where gpu_check.json and gpu_check.md go')
    parser.add_argument('--dry-run', action='store_true', help='every step on the CPU at tiny sizes (minutes)')
    parser.add_argument('--steps', nargs='+', choices=STEPS, default=list(STEPS), help='run only these steps')
    parser.add_argument('--internal-train', metavar='OPT', help=argparse.SUPPRESS)
    parser.add_argument('--channels-last', action='store_true', help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    if args.internal_train:
        return internal_train(args.internal_train, rest, args.channels_last)
    if rest:
        build_parser().error(f'unrecognized arguments: {" ".join(rest)}')
    if args.out is None:
        build_parser().error('--out is required')
    return run(args.out.resolve(), Settings(args.dry_run), args.steps)


if __name__ == '__main__':
    sys.exit(main())
