"""The training path of ``LKSMNModel``: memory layout and autocast precision, from ``train.channels_last``,
``train.precision`` and ``train.lkcd_depthwise_fp32``.

Left at ``auto`` on a CPU with native bf16, the path is chosen by timing: CPUs that compute bf16 natively differ
in whether it pays for this network. ``benchmarks/train_speed.py`` measured LKSMN's plain bf16 autocast step
1.07x as fast as fp32 channels_last at LR patch 16 on an AMD EPYC with AVX512-BF16, and 0.96x (slower) on an
Intel Xeon with AMX, where oneDNN's bf16 backward of LKCD's narrow depthwise convs costs 2.5x its fp32 time; with
those convs kept in fp32 (``LKCD.depthwise_fp32_under_autocast``) bf16 was 1.2x as fast as fp32 there. So the run
times a few steps of its own network at its own batch shape on each candidate path, interleaved, and takes bf16
only where it is clearly faster.
"""
import copy
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from lksmn_arch.archs.lksmn_arch import set_lkcd_depthwise_fp32
from lksmn_arch.errors import TrainingError
from lksmn_arch.utils.cpus import cpu_has_native_bf16

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
BF16_MIN_SPEEDUP = 1.05  # bf16 autocast must beat fp32 by this much to be chosen: otherwise fp32's accuracy wins
TIMING_ROUNDS = 3  # interleaved rounds per candidate path, after one warm-up round each
TIMING_STEPS = 2  # training steps per round
# a candidate's slowest round over its fastest, above which the machine is too busy for the timing to mean anything
# (other processes competing for the cores: a training step then took 60x its quiet time, in any order)
TIMING_SPREAD_LIMIT = 1.25
TIMING_ATTEMPTS = 2  # timings tried before the untimed default is taken

Candidate = Tuple[Optional[torch.dtype], bool]  # (autocast dtype or None for fp32, LKCD depthwise convs in fp32)
StepTimer = Callable[[Optional[torch.dtype], bool], float]  # a Candidate -> seconds per training step


class TrainingPath(NamedTuple):
    """What ``training_path`` chose, and the lines to log about it."""
    channels_last: bool
    autocast_dtype: Optional[torch.dtype]  # None: fp32
    lkcd_depthwise_fp32: bool  # LKCD's depthwise convs in fp32 inside the autocast region
    lines: List[str]


def _candidate_name(candidate: Candidate) -> str:
    dtype, lkcd_fp32 = candidate
    if dtype is None:
        return 'fp32'
    name = f'{"bf16" if dtype == torch.bfloat16 else "fp16"} autocast'
    return f'{name} with LKCD\'s depthwise convs in fp32' if lkcd_fp32 else name


def _timed_candidates(train_opt: Dict[str, Any], device_type: str, network_has_lkcd: bool) -> List[Candidate]:
    """The paths a run times before it trains (none where the options, the device or the network leave one)."""
    if device_type != 'cpu' or not cpu_has_native_bf16():
        return []
    precision = train_opt.get('precision', 'auto')
    lkcd = train_opt.get('lkcd_depthwise_fp32', 'auto')
    if precision not in ('auto', 'bf16'):
        return []
    if lkcd == 'auto' and network_has_lkcd:
        bf16 = [(torch.bfloat16, False), (torch.bfloat16, True)]
    else:
        bf16 = [(torch.bfloat16, lkcd is True and network_has_lkcd)]
    candidates: List[Candidate] = ([(None, False)] if precision == 'auto' else []) + bf16
    return candidates if len(candidates) > 1 else []


def path_is_timed(train_opt: Dict[str, Any], device_type: str, network_has_lkcd: bool = True) -> bool:
    """Whether the training path is chosen by timing here: on a CPU with native bf16, with ``train.precision`` at
    auto (fp32 against bf16), or at bf16 with ``train.lkcd_depthwise_fp32`` at auto (with or without)."""
    return bool(_timed_candidates(train_opt, device_type, network_has_lkcd))


def bf16_pays(fp32_s: float, bf16_s: float) -> bool:
    """Whether a bf16 autocast step of ``bf16_s`` seconds is worth taking over an fp32 one of ``fp32_s``."""
    return fp32_s >= BF16_MIN_SPEEDUP * bf16_s


def choose_path(seconds: Dict[Candidate, float]) -> Candidate:
    """The candidate to train on, from each candidate's seconds per step: the fastest bf16 one, unless fp32 is a
    candidate and bf16 does not beat it by ``BF16_MIN_SPEEDUP``."""
    autocast = {c: s for c, s in seconds.items() if c[0] is not None}
    best = min(autocast, key=autocast.get)
    fp32 = seconds.get((None, False))
    return best if fp32 is None or bf16_pays(fp32, autocast[best]) else (None, False)


def training_path(train_opt: Dict[str, Any], device_type: str, time_step: Optional[StepTimer] = None,
                  network_has_lkcd: bool = True) -> TrainingPath:
    """The training path from ``train.channels_last`` (auto, true, false), ``train.precision`` (auto, fp32, bf16,
    fp16) and ``train.lkcd_depthwise_fp32`` (auto, true, false). auto: on a CPU, channels_last, and bf16 autocast
    where the CPU has native bf16 and ``time_step`` measures it at least ``BF16_MIN_SPEEDUP`` times faster than
    fp32, with LKCD's depthwise convs in fp32 where that times faster (without a timer, as when an option file is
    only checked, bf16 with them in fp32 is assumed); fp32 otherwise. On CUDA, fp32 NCHW (BasicSR's path) until a
    GPU measurement says otherwise. A precision the device cannot run fast falls back to fp32 with a line that
    says so. Weights, optimizer, EMA, checkpoints and validation stay fp32."""
    lines: List[str] = []
    layout = train_opt.get('channels_last', 'auto')
    if layout not in ('auto', True, False):
        raise TrainingError(f'train.channels_last must be auto, true or false, got {layout!r}')
    precision = train_opt.get('precision', 'auto')
    if precision not in PRECISIONS:
        raise TrainingError(f'train.precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
    lkcd = train_opt.get('lkcd_depthwise_fp32', 'auto')
    if lkcd not in ('auto', True, False):
        raise TrainingError(f'train.lkcd_depthwise_fp32 must be auto, true or false, got {lkcd!r}')
    channels_last = (device_type == 'cpu') if layout == 'auto' else bool(layout)
    native_bf16 = cpu_has_native_bf16() if device_type == 'cpu' else torch.cuda.is_bf16_supported()
    candidates = _timed_candidates(train_opt, device_type, network_has_lkcd) if time_step is not None else []
    if candidates:
        pins = ' and '.join(f'train.{key}' for key, value in (('precision', precision), ('lkcd_depthwise_fp32', lkcd))
                            if value == 'auto')
        timed = None
        for _ in range(TIMING_ATTEMPTS):
            timed = time_paths(time_step, candidates)
            if timed is not None:
                break
        if timed is not None:
            seconds = dict(zip(candidates, timed))
            dtype, lkcd_fp32 = rank_zeros_choice(choose_path(seconds))
            timings = ', '.join(f'{s * 1000:.1f} ms in {_candidate_name(c)}' for c, s in seconds.items())
            lines.append(f'Training path timed: a training step of this network and batch took {timings} on this '
                         f'CPU; {_candidate_name((dtype, lkcd_fp32))} taken (bf16 needs {BF16_MIN_SPEEDUP:.2f}x over '
                         f'fp32; set {pins} to pin it).')
        else:  # the untimed default, as when the options are only checked
            dtype, lkcd_fp32 = rank_zeros_choice((torch.bfloat16, network_has_lkcd and lkcd is not False))
            lines.append(f'Training path not timed: a training step varied by more than '
                         f'{(TIMING_SPREAD_LIMIT - 1) * 100:.0f}% from one timed round to the next, twice (other work '
                         f'is competing for this CPU); {_candidate_name((dtype, lkcd_fp32))} taken, the default on a '
                         f'CPU with native bf16 (set {pins} to pin it).')
    else:
        if precision == 'auto':
            precision = 'bf16' if device_type == 'cpu' and native_bf16 else 'fp32'
        elif precision == 'bf16' and not native_bf16:
            lines.append(f'train.precision: bf16 asked, but this {device_type.upper()} has no native bf16 (it would '
                         'be emulated, slower than fp32): training in fp32.')
            precision = 'fp32'
        elif precision == 'fp16' and device_type == 'cpu':
            lines.append('train.precision: fp16 is for CUDA; training in fp32 on this CPU.')
            precision = 'fp32'
        dtype = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]
        lkcd_fp32 = dtype is not None and network_has_lkcd and (device_type == 'cpu' if lkcd == 'auto' else lkcd)
    layout_name = 'channels_last' if channels_last else 'NCHW'
    lines.append(f'Training path: {_candidate_name((dtype, lkcd_fp32))}, {layout_name} on {device_type} '
                 '(train.precision, train.channels_last, train.lkcd_depthwise_fp32).')
    return TrainingPath(channels_last, dtype, lkcd_fp32, lines)


def rank_zeros_choice(candidate: Candidate) -> Candidate:
    """In a distributed run, rank 0's timed choice for every rank (each rank times its own steps, and close timings
    could otherwise send ranks down different paths); ``candidate`` as it is otherwise."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() < 2:
        return candidate
    dtypes = [None, torch.bfloat16, torch.float16]
    code = torch.tensor([dtypes.index(candidate[0]), int(candidate[1])])
    distributed.broadcast(code, src=0)  # timing is a CPU matter, so the backend is gloo and the tensor on the CPU
    return dtypes[int(code[0])], bool(code[1])


def time_paths(time_step: StepTimer, candidates: Sequence[Candidate],
               rounds: int = TIMING_ROUNDS) -> Optional[List[float]]:
    """Seconds per step of each candidate, its fastest round, from interleaved rounds after a warm-up round of each
    (so that a machine that gets busier or quieter meanwhile weighs on all alike); None where a candidate's rounds
    spread beyond ``TIMING_SPREAD_LIMIT``, which only a busy machine does."""
    for candidate in candidates:
        time_step(*candidate)
    seconds: List[List[float]] = [[] for _ in candidates]
    for _ in range(rounds):
        for times, candidate in zip(seconds, candidates):
            times.append(time_step(*candidate))
    if any(max(times) > TIMING_SPREAD_LIMIT * min(times) for times in seconds):
        return None
    return [min(times) for times in seconds]


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

    def time_step(dtype: Optional[torch.dtype], lkcd_fp32: bool) -> float:
        set_lkcd_depthwise_fp32(probe, lkcd_fp32)
        started = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                output = probe(lq)
            F.l1_loss(output.float(), gt).backward()
            probe.zero_grad(set_to_none=True)
        return (time.perf_counter() - started) / steps

    return time_step
