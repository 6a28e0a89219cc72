"""Latency and memory of LKSMN x4 (320x180 -> 1280x720) on every inference path, against lightweight peers.

Not a test: a measurement to run on a quiet machine. Phases, each free of the others' instrumentation:

1. **Latency.** Every network on every path it supports (``lksmn_arch.inference.latency``: eager NCHW, channels_last,
   ``torch.compile`` with freezing in NCHW and channels_last, ONNX Runtime, and bf16), all timed in
   round-robin rounds in this one process under the default allocator: median of ``--rounds`` calls after
   ``--warmup`` rounds. LKSMN runs in its inference form (``fuse_for_inference``), as ``lksmn-upscale``
   runs it; one extra row times its training form. Peers are random-weight networks from spandrel's
   architecture classes: SAFMN (~240K parameters at x4, the closest peer), SPAN and SwinIR-light.
   The ratio column is against SAFMN's *fastest* fp32 path.
2. **Where LKSMN's time goes**: its fastest eager path again, with a timer around each part (hooks).
3. **Memory**: peak memory of one forward per network (CPU: growth of the process's peak RSS, with glibc's
   mmap threshold pinned so that rows are comparable; that setting slows eager code, so it is made only
   now, after all timing), then a 4K output (960x540 -> 3840x2160) in one piece against tiles.

    python benchmarks/speed.py                        # full run, ~10 minutes on 2 CPU cores
    python benchmarks/speed.py --quick                # smoke run
    python benchmarks/speed.py --json out.json --markdown out.md
    python benchmarks/speed.py --plain LKSMN compile_channels_last   # one row alone, for cross-checking

Latency depends on thread count and on what else runs: compare rows of one run, on one machine.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.archs.complexity import count_multi_adds, count_parameters, peak_forward_memory, resolve_device
from lksmn_arch.utils.cpus import cpu_flags, cpu_model_name
from lksmn_arch.inference.upscaler import Upscaler
from lksmn_arch.inference.latency import (ALL_PATHS, FP32_PATHS, GLIBC_MMAP_THRESHOLD_CEILING, OPENVINO_PATHS, inference_form,
                                make_forward, median, runtime_installed, time_interleaved)

SCALE = 4
LR_SIZE = (180, 320)  # (height, width): 1280x720 output at x4
MEMORY_SIZE = (540, 960)  # 3840x2160 output
QUICK_MEMORY_SIZE = (270, 480)  # 1920x1080 output
PEERS = ('SAFMN', 'SPAN', 'SwinIR-light')
TRAINING_FORM = 'eager (training form)'
# (network, path) pairs that take the whole process down, so they are reported, not run
_SPAN_CRASH = ('not run: exporting SPAN for this runtime crashed this process (segmentation fault in '
               'libtorch_cpu, torch 2.13)')
NOT_RUN = {('SPAN', 'onnxruntime'): 'not run: the exported SPAN crashes this process (segmentation fault) when '
           'ONNX Runtime 1.31 builds or runs it',
           ('SPAN', 'openvino'): _SPAN_CRASH, ('SPAN', 'bf16 openvino'): _SPAN_CRASH}
BF16_CPU_PATHS = ('bf16 channels_last', 'bf16 compile_channels_last')
GPU_HALF_PATHS = ('fp16 channels_last', 'bf16 channels_last')


@dataclass
class Row:
    model: str
    path: str
    params: int
    multi_adds: Optional[int]
    latency_ms: Optional[float] = None
    first_call_s: Optional[float] = None
    peak_bytes: Optional[int] = None
    note: str = ''
    times_ms: List[float] = field(default_factory=list)


# --- the networks ------------------------------------------------------------------------------------------

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


def build_networks(peers: Sequence[str], lksmn_configs: Dict[str, dict]) -> Dict[str, nn.Module]:
    torch.manual_seed(0)
    nets: Dict[str, nn.Module] = {name: LKSMN(upscale=SCALE, **kwargs).eval() for name, kwargs in lksmn_configs.items()}
    for name in peers:
        nets[name] = build_peer(name).eval()
    return nets


def parameters_at_inference(model: nn.Module) -> int:
    """Trainable parameters of the network as it runs at inference.

    SPAN's Conv3XC layers keep training-time branches (``conv``, ``sk``) that are folded into ``eval_conv``
    for inference; those branches are not counted, as SPAN's paper does not count them. LKSMN is counted in
    its training form (its checkpoints); fusing only merges parameters.
    """
    total = count_parameters(model)
    for module in model.modules():
        if all(hasattr(module, name) for name in ('eval_conv', 'conv', 'sk')):
            total -= count_parameters(module.conv) + count_parameters(module.sk)
    return total


def _multi_adds(model: nn.Module, shape: Sequence[int]) -> Optional[int]:
    try:
        return count_multi_adds(model, shape)
    except Exception as error:  # a peer whose forward does not run on meta tensors
        print(f'  (Multi-Adds not countable for {type(model).__name__}: {type(error).__name__}: {error})')
        return None


def paths_for(name: str, device: torch.device, bf16: bool) -> List[str]:
    paths = list(FP32_PATHS)
    if device.type == 'cuda':
        paths = [p for p in paths if not p.startswith('compile') or p == 'compile_channels_last'] + list(GPU_HALF_PATHS)
    elif bf16:
        paths += list(BF16_CPU_PATHS)
    if device.type == 'cpu' and runtime_installed('openvino'):
        paths += [p for p in OPENVINO_PATHS if bf16 or not p.startswith('bf16')]
    if name.startswith('LKSMN'):
        paths.insert(0, TRAINING_FORM)
    return paths


def _forward_for(model: nn.Module, path: str, device: torch.device, threads: int, workdir: Path):
    if path == TRAINING_FORM:
        return make_forward(model, 'eager', device=device, fuse=False)
    return make_forward(model, path, device=device, threads=threads, workdir=workdir)


# --- phase 1: latency --------------------------------------------------------------------------------------

def measure_latency(nets: Dict[str, nn.Module], x: torch.Tensor, *, rounds: int, warmup: int, threads: int,
                    bf16: bool, pause: float = 0.0, only: Optional[Tuple[str, str]] = None,
                    paths: Optional[Sequence[str]] = None) -> List[Row]:
    """Phase 1: one Row per (network, path), all interleaved."""
    rows: Dict[str, Row] = {}
    forwards = {}
    with tempfile.TemporaryDirectory(prefix='lksmn_bench_') as workdir:
        for name, model in nets.items():
            params = parameters_at_inference(model)
            multi_adds = _multi_adds(model, tuple(x.shape))
            for path in paths_for(name, x.device, bf16):
                if (only and (name, path) != only) or (paths and path not in paths):
                    continue
                key = f'{name}|{path}'
                rows[key] = Row(name, path, params, multi_adds)
                if (name, path) in NOT_RUN:
                    rows[key].note = NOT_RUN[(name, path)]
                    continue
                try:
                    forwards[key] = _forward_for(model, path, x.device, threads, Path(workdir))
                except Exception as error:  # an export that fails: a row note, not the end of the run
                    rows[key].note = f'failed: {type(error).__name__}: {_short(error)}'
                    print(f'  {key}: {rows[key].note}', flush=True)
        print(f'# timing {len(forwards)} (network, path) pairs interleaved: {warmup} warm-up + {rounds} rounds',
              flush=True)
        times, first = time_interleaved(forwards, x, rounds=rounds, warmup=warmup, pause=pause,
                                        on_progress=lambda line: print(f'  {line}', flush=True))
    for key, values in times.items():
        row = rows[key]
        row.times_ms = [v * 1000 for v in values]
        row.latency_ms = median(row.times_ms)
        if row.latency_ms is None and not row.note:
            row.note = 'failed at its first call'
        if key in first and first[key] == first[key]:
            row.first_call_s = first[key]
    return list(rows.values())


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:140] if text else 'no details'


def fastest_fp32(rows: List[Row], model: str) -> Optional[Row]:
    candidates = [r for r in rows if r.model == model and r.latency_ms is not None and not r.path.startswith(('bf16',
                                                                                                             'fp16'))]
    return min(candidates, key=lambda r: r.latency_ms) if candidates else None


# --- phase 2: where the time goes ----------------------------------------------------------------------------

PART_NAMES = {'MSMA': 'MSMA', 'MDTA': 'MDTA', 'GatedFeedForward': 'feed-forward', 'ConvChannelMixer': 'feed-forward',
              'LayerNorm2d': 'norms', 'BatchNorm2d': 'norms', 'MLFA': 'MLFA', 'PixelShuffleUpsampler': 'upsampler'}


def part_profile(model: nn.Module, x: torch.Tensor, runs: int = 3) -> List[Tuple[str, float]]:
    """(part, share of the forward time) of LKSMN's fused channels_last eager forward, timed with hooks."""
    net = inference_form(model).to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    spent: Dict[str, float] = {}
    starts: Dict[int, float] = {}

    def before(module: nn.Module, _inputs: object) -> None:
        starts[id(module)] = time.perf_counter()

    def after(module: nn.Module, _inputs: object, _output: object) -> None:
        part = PART_NAMES[type(module).__name__]
        spent[part] = spent.get(part, 0.0) + time.perf_counter() - starts.pop(id(module))

    handles = []
    for module in net.modules():
        if type(module).__name__ in PART_NAMES:
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    with torch.no_grad():
        net(x)
        spent.clear()
        start = time.perf_counter()
        for _ in range(runs):
            net(x)
        total = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    parts = sorted(((part, seconds / total) for part, seconds in spent.items()), key=lambda p: -p[1])
    parts.append(('other (first conv, residual adds, ...)', max(0.0, 1 - sum(share for _, share in parts))))
    return parts


# --- phase 3: memory ---------------------------------------------------------------------------------------

def pin_malloc_thresholds() -> bool:
    """Make glibc return every large freed block to the OS at once (fixed 128 KiB mmap threshold).

    ``peak_forward_memory`` measures the growth of the process's peak RSS on the CPU. glibc raises its mmap
    threshold after large frees, so later forwards would reuse heap memory that RSS already counts and a row
    measured after others would read too low. Pinning the threshold keeps memory rows comparable, but makes
    every large temporary a fresh mmap with page faults, which slows eager code: call it only after timing.
    Returns False where this is not glibc.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024) and libc.mallopt(m_trim_threshold, 128 * 1024))
    except (OSError, AttributeError):
        return False


def measure_memory(nets: Dict[str, nn.Module], rows: List[Row], x: torch.Tensor) -> None:
    """Peak memory of one forward of each network on its fastest fp32 eager path (fills ``peak_bytes``)."""
    for name, model in nets.items():
        for row in rows:
            if row.model == name and row.path in ('eager', 'channels_last', TRAINING_FORM) and row.latency_ms:
                forward = _forward_for(model, row.path, x.device, torch.get_num_threads(), Path('.'))
                row.peak_bytes = peak_forward_memory(forward, x)


def tiled_memory(model: nn.Module, size: Tuple[int, int], tile: int, tile_pad: int,
                 device: torch.device) -> List[Dict[str, object]]:
    """Peak memory and seconds of upscaling a ``size`` input with ``Upscaler`` in one piece and in tiles."""
    x = torch.rand(1, 3, *size)
    results = []
    for label, upscaler in (('whole image', Upscaler(model, device=device, progress=False)),
                            (f'tiles {tile} + pad {tile_pad}', Upscaler(model, tile=tile, tile_pad=tile_pad,
                                                                        device=device, progress=False))):
        start = time.perf_counter()
        peak = peak_forward_memory(upscaler.upscale_tensor, x)
        seconds = time.perf_counter() - start
        results.append({'mode': label, 'peak_bytes': peak, 'seconds': seconds})
        print(f'  {label}: {_fmt_mib(peak)} MiB, {seconds:.1f} s', flush=True)
    return results


# --- the machine -------------------------------------------------------------------------------------------

def describe_machine(device: torch.device, threads: int) -> Dict[str, object]:
    """CPU model and the flags that matter for these kernels, thread count, library versions."""
    info: Dict[str, object] = {'torch': torch.__version__, 'threads': threads, 'device': str(device),
                               'python': platform.python_version()}
    try:
        import onnxruntime
        info['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        info['onnxruntime'] = None
    try:
        import openvino
        info['openvino'] = openvino.__version__
    except ImportError:
        info['openvino'] = None
    info['cpu'], flags = cpu_model_name(), cpu_flags()
    info['cpu_count'] = os.cpu_count()
    info['cpu_flags'] = {'AVX2': 'avx2' in flags, 'AVX-512': 'avx512f' in flags, 'AVX-512 BF16': 'avx512_bf16' in flags,
                         'AVX-512 VNNI': 'avx512_vnni' in flags, 'AMX': 'amx_tile' in flags}
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def machine_line(info: Dict[str, object]) -> str:
    flags = ', '.join(f'{k} {"yes" if v else "no"}' for k, v in info['cpu_flags'].items())
    where = f"GPU {info['gpu']}; " if 'gpu' in info else ''
    return (f"{where}CPU {info['cpu']} ({info['cpu_count']} cores; {flags}); {info['threads']} threads; "
            f"torch {info['torch']}, onnxruntime {info['onnxruntime']}"
            + (f", openvino {info['openvino']}" if info.get('openvino') else ''))


# --- output ------------------------------------------------------------------------------------------------

def _fmt_ms(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.1f}'


def _fmt_mib(value: Optional[int]) -> str:
    return 'n/a' if value is None else f'{value / 2**20:.0f}'


def format_table(rows: List[Row], baseline: Optional[Row]) -> str:
    head = f'vs SAFMN fastest fp32 ({baseline.path})' if baseline else 'vs SAFMN fastest fp32'
    lines = [f'| model | path | params | Multi-Adds (G) | latency (ms) | {head} | first call (s) | peak memory (MiB) '
             f'| note |', '|---|---|---:|---:|---:|---:|---:|---:|---|']
    for row in rows:
        ratio = 'n/a' if row.latency_ms is None or not baseline else f'{row.latency_ms / baseline.latency_ms:.2f}x'
        multi_adds = 'n/a' if row.multi_adds is None else f'{row.multi_adds / 1e9:.2f}'
        first = 'n/a' if row.first_call_s is None else f'{row.first_call_s:.1f}'
        lines.append(f'| {row.model} | {row.path} | {row.params / 1e3:.0f}K | {multi_adds} | {_fmt_ms(row.latency_ms)} '
                     f'| {ratio} | {first} | {_fmt_mib(row.peak_bytes)} | {row.note} |')
    return '\n'.join(lines)


def _annotate(rows: List[Row]) -> None:
    for row in rows:
        if row.path == 'onnxruntime' and row.note.startswith('failed') and row.model == 'SAFMN':
            row.note = ('ONNX export fails at 180x320: SAFMN adaptive-max-pools to sizes that do not divide this '
                        'input; ' + row.note)


# --- plain cross-check -------------------------------------------------------------------------------------

def plain_timing(name: str, path: str, *, rounds: int, warmup: int, threads: int, device: torch.device,
                 pause: float, size: Tuple[int, int], lksmn_configs: Dict[str, dict]) -> Optional[float]:
    """Median ms of one network on one path, alone in this process: the reference a table row must match."""
    peers = [name] if name in PEERS else []
    configs = {name: lksmn_configs[name]} if name in lksmn_configs else {}
    if not peers and not configs:
        raise ValueError(f'--plain: unknown network {name!r}; choose from {list(lksmn_configs) + list(PEERS)}')
    nets = build_networks(peers, configs)
    x = torch.rand(1, 3, *size, device=device)
    with tempfile.TemporaryDirectory() as workdir:
        forward = _forward_for(nets[name], path, device, threads, Path(workdir))
        times, _ = time_interleaved({name: forward}, x, rounds=rounds, warmup=warmup, pause=pause)
    return median([t * 1000 for t in times[name]])


# glibc malloc told to keep freed memory (no mmap per large tensor, no trimming): no page faults per call.
# The table runs under the default allocator, as a user's process does; this only shows what a peer whose torch
# path churns memory would gain in a tuned process (SAFMN's torch.compile path faults ~20K pages per call here).
KEEP_MEMORY_TUNABLES = (f'glibc.malloc.mmap_threshold={GLIBC_MMAP_THRESHOLD_CEILING}:'
                        'glibc.malloc.trim_threshold=1073741824')


def _plain_subprocess(name: str, path: str, options: Sequence[str], env: Optional[Dict[str, str]] = None
                      ) -> Optional[float]:
    command = [sys.executable, __file__, '--plain', name, path, *options]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f'  cross-check {name} {path} failed: {result.stderr.strip()[-300:]}', flush=True)
        return None


def cross_check(rows: List[Row], names: Sequence[str], rounds: int, warmup: int, threads: int,
                size: str, pause: float) -> List[Dict]:
    """Re-time each network's fastest fp32 row alone in a fresh process (default allocator, as in the table);
    on glibc, also alone with malloc keeping freed memory (KEEP_MEMORY_TUNABLES). Report the differences."""
    checks = []
    options = ['--rounds', str(rounds), '--warmup', str(warmup), '--threads', str(threads), '--size', size,
               '--pause', str(pause)]
    glibc = platform.libc_ver()[0] == 'glibc'
    for name in names:
        row = fastest_fp32(rows, name)
        if row is None:
            continue
        plain = _plain_subprocess(name, row.path, options)
        if plain is None:
            continue
        kept = _plain_subprocess(name, row.path, options, env={**os.environ, 'GLIBC_TUNABLES': KEEP_MEMORY_TUNABLES}
                                 ) if glibc else None
        difference = (row.latency_ms - plain) / plain
        checks.append({'model': name, 'path': row.path, 'table_ms': row.latency_ms, 'plain_ms': plain,
                       'difference': difference, 'plain_keep_memory_ms': kept})
        kept_text = f'; alone with glibc keeping freed memory {kept:.1f} ms' if kept is not None else ''
        print(f'  {name} {row.path}: table {row.latency_ms:.1f} ms, alone in a fresh process {plain:.1f} ms '
              f'({difference:+.1%}){kept_text}', flush=True)
    return checks


# --- main --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python benchmarks/speed.py',
        description='Latency (all networks and paths interleaved in one process), where LKSMN\'s time goes, and '
        'peak memory of LKSMN x4 (320x180 -> 1280x720) against random-weight peers from spandrel (SAFMN, SPAN, '
        'SwinIR-light); then a 4K upscale (960x540 -> 3840x2160) whole against tiled. Prints Markdown tables; '
        '--json/--markdown write them to files.')
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: 1 warm-up round, 2 timed rounds, memory test at 480x270 -> 1920x1080')
    parser.add_argument('--rounds', type=int, default=None, help='timed rounds (default 10; 2 with --quick)')
    parser.add_argument('--warmup', type=int, default=None, help='warm-up rounds (default 3; 1 with --quick)')
    parser.add_argument('--pause', type=float, default=0.1,
                        help='idle seconds before each timed call (default 0.1), so that spin-waiting thread pools '
                        '(OpenMP, ONNX Runtime) of the previous row are asleep; the cross-check uses the same')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='default auto')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads for torch and ONNX Runtime '
                        '(default: torch.get_num_threads())')
    parser.add_argument('--peers', default=','.join(PEERS), help=f'peers, comma-separated, or "none" (default '
                        f'{",".join(PEERS)})')
    parser.add_argument('--lksmn', action='append', default=None, metavar='NAME=JSON',
                        help='LKSMN configurations to time, e.g. --lksmn \'LKSMN-v1={"ffn": "gated_dconv"}\' '
                        '(repeatable; default: LKSMN with its default keywords, and the named configurations of '
                        'lksmn_arch.archs.lksmn_arch.NAMED_CONFIGS)')
    parser.add_argument('--size', default='320x180', help='input WxH of the latency rows (default 320x180, a 1280x720 '
                        'output)')
    parser.add_argument('--no-bf16', action='store_true', help='skip the bf16 rows')
    parser.add_argument('--paths', default=None, help='only these paths, comma-separated (for a focused run), e.g. '
                        '"onnxruntime,openvino,bf16 openvino,compile"; default: every path each network supports '
                        '(OpenVINO rows when the openvino package is installed)')
    parser.add_argument('--memory-size', default=None, help='input WxH of the whole-vs-tiled memory test '
                        '(default 960x540; 480x270 with --quick); "0" skips it')
    parser.add_argument('--tile', type=int, default=192, help='tile size of the memory test (default 192)')
    parser.add_argument('--tile-pad', type=int, default=32, help='tile padding of the memory test (default 32)')
    parser.add_argument('--no-cross-check', action='store_true',
                        help='skip re-timing each network\'s fastest row alone in a fresh process')
    parser.add_argument('--json', default=None, help='also write every figure (and each row\'s raw times) here')
    parser.add_argument('--markdown', default=None, help='also write the tables here')
    parser.add_argument('--plain', nargs=2, metavar=('NETWORK', 'PATH'), default=None,
                        help='time one network on one path alone and print its median ms (the cross-check)')
    return parser


def lksmn_configurations(specs: Optional[Sequence[str]]) -> Dict[str, dict]:
    from lksmn_arch.archs.lksmn_arch import NAMED_CONFIGS
    if not specs:  # the default network, and each named configuration that differs from it
        default = _state_shapes(LKSMN(upscale=SCALE))
        configs = {'LKSMN': {}}
        configs.update({f'LKSMN-{name}': dict(kwargs) for name, kwargs in NAMED_CONFIGS.items()
                        if _state_shapes(LKSMN(upscale=SCALE, **kwargs)) != default})
        return configs
    configs = {}
    for spec in specs:
        name, _, text = spec.partition('=')
        try:
            kwargs = json.loads(text) if text else {}
        except json.JSONDecodeError as error:
            raise ValueError(f'--lksmn {spec!r}: the keywords are not JSON ({error})') from None
        LKSMN(upscale=SCALE, **kwargs)  # a bad keyword is a one-line error now, not mid-run
        configs[name if name.startswith('LKSMN') else f'LKSMN-{name}'] = kwargs
    return configs


def _state_shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


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
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    try:
        device = resolve_device(args.device)
        peers = [] if args.peers == 'none' else [p for p in args.peers.split(',') if p]
        unknown = sorted(set(peers) - set(PEERS))
        if unknown:
            raise ValueError(f'--peers: unknown {unknown}; choose from {list(PEERS)}')
        configs = lksmn_configurations(args.lksmn)
        memory_size = _parse_size(args.memory_size or ('480x270' if args.quick else '960x540'))
        lr_size = _parse_size(args.size) or LR_SIZE
        path_filter = [p.strip() for p in args.paths.split(',') if p.strip()] if args.paths else None
        unknown_paths = sorted(set(path_filter or ()) - set(ALL_PATHS) - {TRAINING_FORM})
        if unknown_paths:
            raise ValueError(f'--paths: unknown {unknown_paths}; choose from {[TRAINING_FORM, *ALL_PATHS]}')
    except (ValueError, TypeError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    if args.plain:
        name, path = args.plain
        try:
            print(f'{plain_timing(name, path, rounds=rounds, warmup=warmup, threads=threads, device=device, pause=args.pause, size=lr_size, lksmn_configs=configs):.3f}')
        except ValueError as error:
            print(f'error: {error}', file=sys.stderr)
            return 2
        return 0

    machine = describe_machine(device, threads)
    nets = build_networks(peers, configs)
    torch.manual_seed(0)
    x = torch.rand(1, 3, *lr_size, device=device)
    header = (f'# {machine_line(machine)}\n# {lr_size[1]}x{lr_size[0]} -> {lr_size[1] * SCALE}x{lr_size[0] * SCALE}, '
              f'batch 1; median of {rounds} interleaved rounds after {warmup} warm-up rounds, '
              f'{args.pause:g} s idle before each call')
    print(header, flush=True)

    rows = measure_latency(nets, x, rounds=rounds, warmup=warmup, threads=threads,
                           bf16=not args.no_bf16 and device.type == 'cpu', pause=args.pause, paths=path_filter)
    _annotate(rows)
    baseline = fastest_fp32(rows, 'SAFMN')
    lksmn_name = next(iter(configs))

    print('\n# where LKSMN\'s time goes (fused, channels_last eager, timed per part with hooks)', flush=True)
    profile = part_profile(nets[lksmn_name], x)
    profile_lines = ['| part | share of the forward |', '|---|---:|'] + [f'| {part} | {share:.0%} |'
                                                                       for part, share in profile]

    checks = []
    if not args.no_cross_check:
        print('\n# cross-check: each network\'s fastest fp32 row re-timed alone in a fresh process', flush=True)
        checks = cross_check(rows, [n for n in (lksmn_name, 'SAFMN') if n in nets], rounds, warmup, threads,
                             args.size, args.pause)

    pinned = device.type == 'cuda' or pin_malloc_thresholds()
    print('\n# peak memory of one forward (after all timing)', flush=True)
    measure_memory(nets, rows, x)
    memory = []
    if memory_size:
        height, width = memory_size
        print(f'\n# peak memory of upscaling {width}x{height} -> {width * SCALE}x{height * SCALE} ({lksmn_name} x4, '
              f'{device}, fp32, Upscaler defaults): whole image against tiles', flush=True)
        memory = tiled_memory(nets[lksmn_name], memory_size, args.tile, args.tile_pad, device)

    lksmn_rows = [r for r in rows if r.model.startswith('LKSMN')]
    rows = lksmn_rows + [r for r in rows if not r.model.startswith('LKSMN')]
    markdown = [header, '', format_table(rows, baseline)]
    if not pinned:
        markdown.append('\n(glibc not found: CPU memory rows may read low)')
    if baseline is None:
        markdown.append('\n(no SAFMN latency, so no ratio column)')
    markdown += ['', f'Where {lksmn_name}\'s time goes:', ''] + profile_lines
    if checks:
        markdown += ['', 'Cross-check, fastest fp32 rows re-timed alone in a fresh process (default allocator, as in '
                     'the table; last column: glibc malloc keeping freed memory, '
                     f'`GLIBC_TUNABLES={KEEP_MEMORY_TUNABLES}`):', '',
                     '| model | path | table (ms) | alone (ms) | difference | alone, malloc keeps memory (ms) |',
                     '|---|---|---:|---:|---:|---:|']
        markdown += [f"| {c['model']} | {c['path']} | {c['table_ms']:.1f} | {c['plain_ms']:.1f} | "
                     f"{c['difference']:+.1%} | {_fmt_ms(c['plain_keep_memory_ms'])} |" for c in checks]
    if memory:
        height, width = memory_size
        markdown += ['', '| input -> output | mode | peak memory (MiB) | time (s) |', '|---|---|---:|---:|']
        markdown += [f"| {width}x{height} -> {width * SCALE}x{height * SCALE} | {m['mode']} | "
                     f"{_fmt_mib(m['peak_bytes'])} | {m['seconds']:.1f} |" for m in memory]
    text = '\n'.join(markdown)
    print('\n' + text)
    if args.markdown:
        Path(args.markdown).write_text(text + '\n')
    if args.json:
        report = {'machine': machine, 'input': list(x.shape), 'scale': SCALE, 'rounds': rounds, 'warmup': warmup,
                  'pause_s': args.pause, 'lksmn_configs': configs, 'rows': [asdict(r) for r in rows],
                  'baseline': asdict(baseline) if baseline else None, 'profile': profile, 'cross_check': checks,
                  'memory_size': list(memory_size) if memory_size else None, 'memory': memory}
        Path(args.json).write_text(json.dumps(report, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
