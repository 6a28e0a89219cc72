"""How much memory an upscaling pass needs, how much this process may use, and the tile that fits.

The cost of one pass is a measured linear model per backend and precision (``memory_model.json``, written by
``benchmarks/upscale_memory.py``): ``intercept + bytes_per_pixel * pixels`` for the pixels the network sees at
once, scaled by the network's width for networks other than the shipped one. What may be used is the smaller
of the kernel's MemAvailable and what the cgroup (container, systemd slice) still allows; on CUDA,
``torch.cuda.mem_get_info``. ``--tile auto`` runs the whole image when its pass fits in ``SAFETY`` of that,
after the output's own buffers, and otherwise the largest tile that does.
"""
import functools
import json
import math
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

from lksmn_arch.utils.sysfs import read_value

MODEL_FILE = Path(__file__).with_name('memory_model.json')
SAFETY = 0.7  # use at most this share of the free memory: the model is a fit, allocators fragment
# --tile auto without --max-memory: the passes take at most this much (beside the output), however much is free,
# so that upscaling a photo leaves a laptop usable; an image whose pass fits runs whole (and exactly)
DEFAULT_PASS_BUDGET = 2 ** 30
MIN_AUTO_TILE = 64
REFERENCE_FEATURES = 48  # the width of the network the model was measured on


class InsufficientMemoryError(MemoryError):
    """A pass that cannot fit in the memory this process may use (the message says what it needs and has)."""


# --- this process ------------------------------------------------------------------------------------------

def _status_bytes(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1]) * 1024
    raise OSError(f'/proc/self/status has no {field}')


def current_rss() -> int:
    """Resident memory of this process now, in bytes (Linux)."""
    return _status_bytes('VmRSS')


def peak_rss() -> int:
    """Peak resident memory of this process since it started or since ``reset_peak_rss``, in bytes (Linux)."""
    return _status_bytes('VmHWM')


def reset_peak_rss() -> None:
    """Restart the peak (VmHWM) from the current resident memory (Linux: /proc/self/clear_refs)."""
    Path('/proc/self/clear_refs').write_text('5')


def _read_int(path: str) -> Optional[int]:
    text = read_value(path)
    return int(text) if text is not None and text.isdigit() else None


def cgroup_headroom() -> Optional[int]:
    """Bytes the cgroup of this process may still allocate (v2 memory.max, or v1), None without a limit."""
    for limit_file, usage_file in (('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
                                   ('/sys/fs/cgroup/memory/memory.limit_in_bytes',
                                    '/sys/fs/cgroup/memory/memory.usage_in_bytes')):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2 ** 60:
            return max(0, limit - usage)
    return None


def available_memory(device_type: str = 'cpu') -> int:
    """Bytes this process may still use on ``device_type``: on the CPU the smaller of MemAvailable and the
    cgroup's headroom; on CUDA the free memory of the current device."""
    if device_type == 'cuda':
        import torch
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    available = None
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:  # not Linux: what os reports as physical memory
        available = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')
    headroom = cgroup_headroom()
    return available if headroom is None else min(available, headroom)


# --- the model ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _load_model() -> Dict[Tuple[str, str], Tuple[float, float]]:
    """(backend, precision) -> (intercept bytes, bytes per input pixel), read once from ``MODEL_FILE``."""
    data = json.loads(MODEL_FILE.read_text())
    return {(r['backend'], r['precision']): (float(r['intercept_bytes']), float(r['bytes_per_pixel']))
            for r in data['rows']}


def pass_bytes(pixels: int, backend: str = 'torch', precision: str = 'fp32', num_feat: int = REFERENCE_FEATURES) -> int:
    """The measured peak memory of one pass over ``pixels`` input pixels (no TTA) on this backend/precision.
    A pair that was not measured takes the costliest measured one."""
    model = _load_model()
    intercept, per_pixel = model.get((backend, precision)) or max(model.values(), key=lambda v: v[1])
    return int(intercept + per_pixel * pixels * max(1.0, num_feat / REFERENCE_FEATURES))


def output_bytes(height: int, width: int, scale: int, channels: int = 3) -> int:
    """What outlives the passes: the float32 output (tiled: the blending accumulator the tiles are added into)
    and its 8-bit conversion."""
    out = height * width * scale * scale * channels
    return out * 4 + out


def pass_budget(height: int, width: int, scale: int, device_type: str = 'cpu',
                max_memory: Optional[int] = None) -> int:
    """Bytes ``--tile auto`` gives the network's passes: ``SAFETY`` of the free memory, less the output's own
    buffers (on the CPU), and at most ``max_memory`` less the output, or ``DEFAULT_PASS_BUDGET`` without it."""
    output = output_bytes(height, width, scale) if device_type == 'cpu' else 0
    budget = int(available_memory(device_type) * SAFETY) - output
    cap = DEFAULT_PASS_BUDGET if max_memory is None else max_memory - output
    return min(budget, cap)


def choose_tile(height: int, width: int, scale: int, *, tile_pad: int, backend: str = 'torch',
                precision: str = 'fp32', num_feat: int = REFERENCE_FEATURES, device_type: str = 'cpu',
                max_memory: Optional[int] = None) -> int:
    """The tile ``--tile auto`` runs: 0 (the whole image) when its pass fits ``pass_budget``, else the largest
    square tile whose padded pass fits. InsufficientMemoryError when not even a small tile does."""
    budget = pass_budget(height, width, scale, device_type, max_memory)
    whole = pass_bytes(height * width, backend, precision, num_feat)
    if whole <= budget:
        return 0
    side = 0
    for candidate in range(max(height, width), MIN_AUTO_TILE - 1, -16):  # the largest that fits
        if pass_bytes((candidate + 2 * tile_pad) ** 2, backend, precision, num_feat) <= budget:
            side = candidate
            break
    if side < MIN_AUTO_TILE:
        limit = (f'--max-memory {max_memory / 2**30:.1f} GiB' if max_memory is not None
                 else f'the {available_memory(device_type) / 2**30:.1f} GiB free')
        raise InsufficientMemoryError(
            f'a {width}x{height} image does not fit in {limit}: its x{scale} output alone takes '
            f'{output_bytes(height, width, scale) / 2**30:.1f} GiB and not even a {MIN_AUTO_TILE}-pixel tile fits '
            'beside it; free memory or raise --max-memory')
    return side


def check_whole_image_fits(height: int, width: int, scale: int, *, backend: str = 'torch', precision: str = 'fp32',
                           num_feat: int = REFERENCE_FEATURES, device_type: str = 'cpu',
                           max_memory: Optional[int] = None) -> None:
    """``--tile 0``: InsufficientMemoryError (what it needs, what is free) when the whole-image pass cannot fit,
    instead of being killed by the kernel part-way."""
    free = available_memory(device_type)
    if max_memory is not None:
        free = min(free, max_memory)
    need = pass_bytes(height * width, backend, precision, num_feat) + (
        output_bytes(height, width, scale) if device_type == 'cpu' else 0)
    if need > free:
        raise InsufficientMemoryError(
            f'--tile 0: a {width}x{height} image needs about {need / 2**30:.1f} GiB in one pass, but '
            f'{free / 2**30:.1f} GiB is free; use --tile auto (the default) or a --tile size')


def parse_memory(text: str) -> int:
    """``--max-memory``: bytes from '6G', '512M', '2.5GiB' or a plain number of bytes; ValueError otherwise."""
    units = {'': 1, 'k': 2 ** 10, 'm': 2 ** 20, 'g': 2 ** 30, 't': 2 ** 40}
    value = text.strip().lower().removesuffix('ib').removesuffix('b')
    unit = value[-1] if value and value[-1] in units else ''
    number = value[:len(value) - len(unit)]
    try:
        amount = float(number) * units[unit]
    except ValueError:
        amount = float('nan')
    if not (amount >= 2 ** 20 and math.isfinite(amount)):
        raise ValueError(f'--max-memory {text!r} must be an amount of memory of at least 1M, such as 6G or 512M')
    return int(amount)
