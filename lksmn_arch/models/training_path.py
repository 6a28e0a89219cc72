"""The training path of ``LKSMNModel``: memory layout and autocast precision, from ``train.channels_last`` and
``train.precision``.

Left at ``auto`` on a CPU with native bf16, the precision is chosen by timing: CPUs that compute bf16 natively
differ in whether it pays for this network. ``benchmarks/train_speed.py`` measured LKSMN's bf16 autocast step
1.07x as fast as fp32 channels_last at LR patch 16 on an AMD EPYC with AVX512-BF16, and 0.96x (slower) on an
Intel Xeon with AMX, while SAFMN gained on both. So the run times a few steps of its own network at its own
batch shape in both precisions, interleaved, and takes bf16 only where it is clearly faster.
"""
import copy
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from lksmn_arch.errors import TrainingError
from lksmn_arch.utils.cpus import cpu_has_native_bf16

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
BF16_MIN_SPEEDUP = 1.05  # bf16 autocast must beat fp32 by this much to be chosen: otherwise fp32's accuracy wins
TIMING_ROUNDS = 3  # interleaved rounds per precision, after one warm-up round each
TIMING_STEPS = 2  # training steps per round

StepTimer = Callable[[Optional[torch.dtype]], float]  # autocast dtype (None: fp32) -> seconds per training step


def precision_is_timed(train_opt: Dict[str, Any], device_type: str) -> bool:
    """Whether ``train.precision`` (auto) is chosen by timing here: on a CPU with native bf16."""
    return train_opt.get('precision', 'auto') == 'auto' and device_type == 'cpu' and cpu_has_native_bf16()


def bf16_pays(fp32_s: float, bf16_s: float) -> bool:
    """Whether a bf16 autocast step of ``bf16_s`` seconds is worth taking over an fp32 one of ``fp32_s``."""
    return fp32_s >= BF16_MIN_SPEEDUP * bf16_s


def training_path(train_opt: Dict[str, Any], device_type: str,
                  time_step: Optional[StepTimer] = None) -> Tuple[bool, Optional[torch.dtype], List[str]]:
    """(channels_last, autocast dtype or None, lines to log) from ``train.channels_last`` (auto, true, false) and
    ``train.precision`` (auto, fp32, bf16, fp16). auto: on a CPU, channels_last, and bf16 autocast where the CPU
    has native bf16 and ``time_step`` measures it at least ``BF16_MIN_SPEEDUP`` times faster than fp32 (without
    a timer, as when an option file is only checked, bf16 is assumed); fp32 otherwise. On CUDA, fp32 NCHW
    (BasicSR's path) until a GPU measurement says otherwise. A precision the device cannot run fast falls back
    to fp32 with a line that says so. Weights, optimizer, EMA, checkpoints and validation stay fp32."""
    lines: List[str] = []
    layout = train_opt.get('channels_last', 'auto')
    if layout not in ('auto', True, False):
        raise TrainingError(f'train.channels_last must be auto, true or false, got {layout!r}')
    precision = train_opt.get('precision', 'auto')
    if precision not in PRECISIONS:
        raise TrainingError(f'train.precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
    channels_last = (device_type == 'cpu') if layout == 'auto' else bool(layout)
    native_bf16 = cpu_has_native_bf16() if device_type == 'cpu' else torch.cuda.is_bf16_supported()
    if precision == 'auto':
        precision = 'fp32'
        if device_type == 'cpu' and native_bf16:
            precision = 'bf16'
            if time_step is not None:
                fp32_s, bf16_s = time_precisions(time_step)
                precision = 'bf16' if bf16_pays(fp32_s, bf16_s) else 'fp32'
                lines.append(f'train.precision auto: a training step of this network and batch took '
                             f'{bf16_s * 1000:.1f} ms in bf16 autocast and {fp32_s * 1000:.1f} ms in fp32 on this '
                             f'CPU; {precision} taken (bf16 needs {BF16_MIN_SPEEDUP:.2f}x; set train.precision '
                             f'to pin it).')
    elif precision == 'bf16' and not native_bf16:
        lines.append(f'train.precision: bf16 asked, but this {device_type.upper()} has no native bf16 (it would '
                     'be emulated, slower than fp32): training in fp32.')
        precision = 'fp32'
    elif precision == 'fp16' and device_type == 'cpu':
        lines.append('train.precision: fp16 is for CUDA; training in fp32 on this CPU.')
        precision = 'fp32'
    dtype = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]
    lines.append(f'Training path: {precision}{" autocast" if dtype else ""}, '
                 f'{"channels_last" if channels_last else "NCHW"} on {device_type} (train.precision, '
                 'train.channels_last).')
    return channels_last, dtype, lines


def time_precisions(time_step: StepTimer, rounds: int = TIMING_ROUNDS) -> Tuple[float, float]:
    """Median seconds per step of fp32 and of bf16 autocast, in interleaved rounds after a warm-up round of each
    (so that a machine that gets busier or quieter meanwhile weighs on both alike)."""
    time_step(None)
    time_step(torch.bfloat16)
    fp32: List[float] = []
    bf16: List[float] = []
    for _ in range(rounds):
        fp32.append(time_step(None))
        bf16.append(time_step(torch.bfloat16))
    return statistics.median(fp32), statistics.median(bf16)


def network_step_timer(net: torch.nn.Module, batch_size: int, lr_patch: int, scale: int, channels_last: bool,
                       device: torch.device, steps: int = TIMING_STEPS) -> StepTimer:
    """A ``StepTimer`` over a copy of ``net`` (the training network is left as it was): forward under autocast,
    L1 loss and backward on a random batch of the training shape, as ``LKSMNModel.optimize_parameters`` runs it
    (the optimizer step, fp32 in both, is left out). Its random inputs come from their own generator, so that
    the run's random stream is untouched."""
    probe = copy.deepcopy(net).train()
    generator = torch.Generator().manual_seed(0)
    lq = torch.rand(batch_size, 3, lr_patch, lr_patch, generator=generator).to(device)
    gt = torch.rand(batch_size, 3, lr_patch * scale, lr_patch * scale, generator=generator).to(device)
    if channels_last:
        lq = lq.contiguous(memory_format=torch.channels_last)

    def time_step(dtype: Optional[torch.dtype]) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                output = probe(lq)
            F.l1_loss(output.float(), gt).backward()
            probe.zero_grad(set_to_none=True)
        return (time.perf_counter() - started) / steps

    return time_step
