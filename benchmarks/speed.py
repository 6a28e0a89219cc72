"""Speed and memory of LKSMN x4 (320x180 -> 1280x720) in each inference path, against lightweight peers.

Not a test: a measurement to run on a quiet machine. In one run it prints a Markdown table of

* LKSMN (default hyperparameters) in each inference path: eager, channels_last, torch.compile, ONNX Runtime;
* peers built *without weights* (random init) from spandrel's architecture classes, eager: SAFMN (dim 36,
  8 blocks, ~240K parameters at x4, the closest peer in size), SPAN (48 channels) and SwinIR-light
  (embed_dim 60, depths/heads [6,6,6,6], window 8, 'pixelshuffledirect');

with parameters, Multi-Adds (``lksmn_arch.complexity.count_multi_adds``), median latency after warm-up,
the ratio to SAFMN eager, and peak memory of one forward (``peak_forward_memory``: CUDA allocator peak, or
the process's peak RSS growth on the CPU). Then the peak memory of upscaling to a 4K output
(960x540 -> 3840x2160) in one piece against tiles.

    python benchmarks/speed.py                 # full run (several minutes on a CPU)
    python benchmarks/speed.py --quick         # 1 warm-up, 2 timed runs, 1920x1080 memory test: a smoke run

Latency depends on thread count and on what else runs: compare rows of one run, on one machine.
"""
import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.complexity import count_multi_adds, count_parameters, peak_forward_memory, resolve_device
from lksmn_arch.inference import Upscaler

SCALE = 4
LR_SIZE = (180, 320)  # (height, width): 1280x720 output at x4
MEMORY_SIZE = (540, 960)  # 3840x2160 output
QUICK_MEMORY_SIZE = (270, 480)  # 1920x1080 output
PATHS = ('eager', 'channels_last', 'compile', 'onnxruntime')
PEERS = ('SAFMN', 'SPAN', 'SwinIR-light')

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Row:
    model: str
    path: str
    params: int
    multi_adds: Optional[int]
    latency_ms: Optional[float] = None
    peak_bytes: Optional[int] = None
    note: str = ''


def build_peer(name: str) -> nn.Module:
    """A peer network at x4 with random weights, built from spandrel's architecture classes."""
    if name == 'SAFMN':
        from spandrel.architectures.SAFMN import SAFMN
        return SAFMN(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=SCALE)
    if name == 'SPAN':
        from spandrel.architectures.SPAN import SPAN
        return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=SCALE)
    if name == 'SwinIR-light':
        from spandrel.architectures.SwinIR import SwinIR
        return SwinIR(upscale=SCALE, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6, 6, 6, 6],
                      embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2.0, upsampler='pixelshuffledirect',
                      resi_connection='1conv')
    raise ValueError(f'unknown peer {name!r}; choose from {list(PEERS)}')


def parameters_at_inference(model: nn.Module) -> int:
    """Trainable parameters of the network as it runs at inference.

    SPAN's Conv3XC layers keep training-time branches (``conv``, ``sk``) that are folded into ``eval_conv``
    for inference; those branches are not counted, as SPAN's paper does not count them.
    """
    total = count_parameters(model)
    for module in model.modules():
        if all(hasattr(module, name) for name in ('eval_conv', 'conv', 'sk')):
            total -= count_parameters(module.conv) + count_parameters(module.sk)
    return total


def pin_malloc_thresholds() -> bool:
    """Make glibc return every large freed block to the OS at once (fixed 128 KiB mmap threshold).

    ``peak_forward_memory`` measures the growth of the process's peak RSS on the CPU. glibc raises its mmap
    threshold after large frees, so later forwards reuse heap memory that RSS already counts and a row measured
    after others would read too low; fixing the threshold (as MALLOC_MMAP_THRESHOLD_ does) keeps rows
    comparable. Returns False where this is not glibc.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024) and libc.mallopt(m_trim_threshold, 128 * 1024))
    except (OSError, AttributeError):
        return False


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def median_latency_ms(forward: Forward, x: torch.Tensor, runs: int, warmup: int) -> Tuple[float, float]:
    """(median latency of ``runs`` timed calls in ms, seconds taken by the first warm-up call)."""
    first = 0.0
    with torch.no_grad():
        for i in range(max(warmup, 1)):
            start = time.perf_counter()
            forward(x)
            _sync(x.device)
            if i == 0:
                first = time.perf_counter() - start
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            forward(x)
            _sync(x.device)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), first


def _multi_adds(model: nn.Module, shape: Sequence[int]) -> Optional[int]:
    try:
        return count_multi_adds(model, shape)
    except Exception as error:  # a peer whose forward does not run on meta tensors
        print(f'  (Multi-Adds not countable for {type(model).__name__}: {type(error).__name__}: {error})')
        return None


def _lksmn_forward(model: nn.Module, path: str, device: torch.device, threads: int, workdir: Path
                   ) -> Tuple[Forward, Callable[[torch.Tensor], torch.Tensor], Optional[Callable[[], Forward]]]:
    """(forward for ``path``, how to prepare its input, maker of a fresh forward for memory or None)."""
    if path == 'eager':
        return model, lambda x: x, None
    if path == 'channels_last':
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return cl, lambda x: x.contiguous(memory_format=torch.channels_last), None
    if path == 'compile':
        return torch.compile(copy.deepcopy(model)), lambda x: x, None
    if path == 'onnxruntime':
        from lksmn_arch.export import OnnxModel, export_onnx
        onnx_path = export_onnx(copy.deepcopy(model).cpu(), workdir / 'lksmn_x4.onnx')

        def session() -> Forward:
            return OnnxModel(onnx_path, device=device.type, threads=threads if device.type == 'cpu' else None)
        return session(), lambda x: x.cpu(), session
    raise ValueError(f'unknown path {path!r}; choose from {list(PATHS)}')


def measure(name: str, path: str, model: nn.Module, forward: Forward, x: torch.Tensor, runs: int,
            warmup: int, multi_adds: Optional[int], fresh: Optional[Callable[[], Forward]] = None) -> Row:
    """One table row. ``fresh`` makes a new, never-run forward for the memory measurement, for runtimes that
    keep their working memory in an arena after the first run (ONNX Runtime)."""
    row = Row(name, path, parameters_at_inference(model), multi_adds)
    try:
        row.latency_ms, first = median_latency_ms(forward, x, runs, warmup)
        if path == 'compile':
            row.note = f'first call (compilation) {first:.1f} s'
        if path == 'onnxruntime' and x.device.type == 'cuda':
            row.note = 'memory: ONNX Runtime allocates outside torch, not measured'
        else:
            row.peak_bytes = peak_forward_memory(fresh() if fresh else forward, x)
    except Exception as error:  # one path failing (no compiler, no provider) must not stop the others
        row.note = f'failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ""}'
    print(f'  {name} {path}: {_fmt_ms(row.latency_ms)} ms {row.note}', flush=True)
    return row


def _fmt_ms(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.1f}'


def _fmt_mib(value: Optional[int]) -> str:
    return 'n/a' if value is None else f'{value / 2**20:.0f}'


def format_table(rows: List[Row], baseline: Optional[float]) -> str:
    lines = ['| model | path | params | Multi-Adds (G) | latency (ms) | vs SAFMN eager | peak memory (MiB) | note |',
             '|---|---|---:|---:|---:|---:|---:|---|']
    for row in rows:
        ratio = 'n/a' if row.latency_ms is None or not baseline else f'{row.latency_ms / baseline:.2f}x'
        multi_adds = 'n/a' if row.multi_adds is None else f'{row.multi_adds / 1e9:.2f}'
        lines.append(f'| {row.model} | {row.path} | {row.params / 1e3:.0f}K | {multi_adds} | '
                     f'{_fmt_ms(row.latency_ms)} | {ratio} | {_fmt_mib(row.peak_bytes)} | {row.note} |')
    return '\n'.join(lines)


def tiled_memory(model: nn.Module, size: Tuple[int, int], tile: int, tile_pad: int,
                 device: torch.device) -> List[Tuple[str, Optional[int], float]]:
    """(label, peak memory in bytes, seconds) of upscaling a ``size`` input in one piece and in tiles."""
    x = torch.rand(1, 3, *size)
    results = []
    for label, upscaler in (('whole image', Upscaler(model, device=device, progress=False)),
                            (f'tiles {tile} + pad {tile_pad}', Upscaler(model, tile=tile, tile_pad=tile_pad,
                                                                        device=device, progress=False))):
        start = time.perf_counter()
        peak = peak_forward_memory(upscaler.upscale_tensor, x)
        results.append((label, peak, time.perf_counter() - start))
        print(f'  {label}: {_fmt_mib(peak)} MiB, {time.perf_counter() - start:.1f} s', flush=True)
    return results


def _describe(device: torch.device, threads: int) -> str:
    if device.type == 'cuda':
        where = torch.cuda.get_device_name(device)
    else:
        where = f'CPU ({platform.processor() or platform.machine()}), {threads} threads'
    return f'torch {torch.__version__}, {where}'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python benchmarks/speed.py',
        description='Latency and peak memory of LKSMN x4 (320x180 -> 1280x720) in each inference path and of '
        'random-weight peers from spandrel (SAFMN, SPAN, SwinIR-light), as a Markdown table; then the peak memory '
        'of a 4K upscale (960x540 -> 3840x2160) whole against tiled.')
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: 1 warm-up, 2 timed runs, 4K memory test at 480x270 -> 1920x1080')
    parser.add_argument('--runs', type=int, default=None, help='timed runs per row (default 10; 2 with --quick)')
    parser.add_argument('--warmup', type=int, default=None, help='warm-up runs per row (default 3; 1 with --quick)')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='default auto')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads for torch and ONNX Runtime '
                        '(default: torch.get_num_threads())')
    parser.add_argument('--paths', default=','.join(PATHS), help=f'LKSMN paths, comma-separated (default all: '
                        f'{",".join(PATHS)})')
    parser.add_argument('--peers', default=','.join(PEERS), help=f'peers, comma-separated, or "none" (default '
                        f'{",".join(PEERS)})')
    parser.add_argument('--memory-size', default=None, help='input WxH of the whole-vs-tiled memory test '
                        '(default 960x540; 480x270 with --quick); "0" skips it')
    parser.add_argument('--tile', type=int, default=192, help='tile size of the memory test (default 192)')
    parser.add_argument('--tile-pad', type=int, default=32, help='tile padding of the memory test (default 32)')
    return parser


def _parse_size(text: str) -> Optional[Tuple[int, int]]:
    if text == '0':
        return None
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f'--memory-size must look like 960x540 (or 0), got {text!r}') from None
    return height, width


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings('ignore', message='torch.meshgrid')  # SwinIR's, harmless
    runs = args.runs if args.runs is not None else (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    try:
        device = resolve_device(args.device)
        paths = [p for p in args.paths.split(',') if p]
        peers = [] if args.peers == 'none' else [p for p in args.peers.split(',') if p]
        for value, accepted, option in ((paths, PATHS, '--paths'), (peers, PEERS, '--peers')):
            unknown = sorted(set(value) - set(accepted))
            if unknown:
                raise ValueError(f'{option}: unknown {unknown}; choose from {list(accepted)}')
        memory_size = _parse_size(args.memory_size or ('480x270' if args.quick else '960x540'))
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    pinned = pin_malloc_thresholds()
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    shape = (1, 3, *LR_SIZE)
    x = torch.rand(*shape, device=device)
    print(f'# {_describe(device, threads)}; {LR_SIZE[1]}x{LR_SIZE[0]} -> {LR_SIZE[1] * SCALE}x{LR_SIZE[0] * SCALE}, '
          f'fp32, batch 1; median of {runs} runs after {warmup} warm-up'
          + ('' if pinned or device.type == 'cuda' else '; (glibc not found: CPU memory rows may read low)'),
          flush=True)

    rows: List[Row] = []
    baseline: Optional[float] = None
    for name in peers:
        model = build_peer(name).eval().to(device)
        row = measure(name, 'eager', model, model, x, runs, warmup, _multi_adds(model, shape))
        if name == 'SAFMN':
            baseline = row.latency_ms
        rows.append(row)
        del model

    lksmn = LKSMN(upscale=SCALE).eval().to(device)
    lksmn_multi_adds = _multi_adds(lksmn, shape)
    with tempfile.TemporaryDirectory(prefix='lksmn_bench_') as workdir:
        for path in paths:
            try:
                forward, prepare, fresh = _lksmn_forward(lksmn, path, device, threads, Path(workdir))
            except Exception as error:  # e.g. the ONNX export failing: report it in the table
                rows.append(Row('LKSMN', path, count_parameters(lksmn), lksmn_multi_adds, note=f'failed: {error}'))
                continue
            rows.append(measure('LKSMN', path, lksmn, forward, prepare(x), runs, warmup, lksmn_multi_adds, fresh))
            del forward

    rows = [r for r in rows if r.model == 'LKSMN'] + [r for r in rows if r.model != 'LKSMN']
    print()
    print(format_table(rows, baseline))
    if not baseline:
        print('\n(no SAFMN eager latency, so no ratio column)')

    if memory_size:
        height, width = memory_size
        print(f'\n# Peak memory of upscaling {width}x{height} -> {width * SCALE}x{height * SCALE} (LKSMN x4, '
              f'{device}, fp32): whole image against tiles', flush=True)
        results = tiled_memory(lksmn, memory_size, args.tile, args.tile_pad, device)
        print()
        print('| input -> output | mode | peak memory (MiB) | time (s) |')
        print('|---|---|---:|---:|')
        for label, peak, seconds in results:
            print(f'| {width}x{height} -> {width * SCALE}x{height * SCALE} | {label} | {_fmt_mib(peak)} | '
                  f'{seconds:.1f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
