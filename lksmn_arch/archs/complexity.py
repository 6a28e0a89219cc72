"""Complexity report: parameters, Multi-Adds for a 1280x720 output, and peak memory of one forward.

Multi-Adds follow the lightweight-SR convention (multiply-accumulates of one forward pass that
produces a 1280x720 image, i.e. an input of 1280/s x 720/s), counted by ``torch.utils.flop_counter``
on the meta device (no real computation) and halved from FLOPs to multiply-adds. It counts
convolutions and matrix products, the operations the convention counts.

    python -m lksmn_arch.archs.complexity --scale 4
"""
import argparse
import copy
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lksmn_arch.archs.lksmn_arch import LKSMN, SUPPORTED_SCALES

OUTPUT_SIZE = (720, 1280)  # (height, width) of the output, the convention's 720p


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lr_size_for_output(scale: int, output_size: Sequence[int] = OUTPUT_SIZE) -> tuple:
    """Input (height, width) whose upscaled output is ``output_size`` (rounded down for x3)."""
    return output_size[0] // scale, output_size[1] // scale


def count_multi_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass on an input of ``input_shape`` (N, C, H, W), counted on meta tensors."""
    meta_model = _clone_to_meta(model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta_model(torch.empty(*input_shape, device='meta'))
    return counter.get_total_flops() // 2


def _clone_to_meta(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to('meta').eval()


def _read_status_kib(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise RuntimeError(f'/proc/self/status has no {field}')


def peak_forward_memory(model: nn.Module, x: torch.Tensor) -> Optional[int]:
    """Extra memory (bytes) at the peak of one no-grad forward, beyond what was in use before it.

    CUDA: the caching allocator's peak statistics. CPU: the process's peak resident set size
    (Linux VmHWM, reset through /proc/self/clear_refs just before the forward). Returns None where
    neither can be measured (CPU on a non-Linux system).
    """
    if x.device.type == 'cuda':
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        before = torch.cuda.memory_allocated(x.device)
        with torch.no_grad():
            model(x)
        torch.cuda.synchronize(x.device)
        return torch.cuda.max_memory_allocated(x.device) - before
    try:
        Path('/proc/self/clear_refs').write_text('5')
        before = _read_status_kib('VmRSS')
    except OSError:
        return None
    with torch.no_grad():
        model(x)
    return (_read_status_kib('VmHWM') - before) * 1024


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU (use 'auto' or 'cpu')")
    return torch.device(name)


def complexity_report(scale: int, device: str = 'auto', measure_memory: bool = True) -> Dict[str, object]:
    """Parameters, Multi-Adds and (optionally) peak forward memory of the default LKSMN at ``scale``."""
    model = LKSMN(upscale=scale).eval()
    height, width = lr_size_for_output(scale)
    report: Dict[str, object] = {
        'scale': scale,
        'input': (height, width),
        'output': (height * scale, width * scale),
        'parameters': count_parameters(model),
        'multi_adds': count_multi_adds(model, (1, 3, height, width)),
    }
    if measure_memory:
        torch_device = resolve_device(device)
        model.to(torch_device)
        report['device'] = str(torch_device)
        report['peak_memory'] = peak_forward_memory(model, torch.rand(1, 3, height, width, device=torch_device))
    return report


def format_report(report: Dict[str, object]) -> str:
    lines = [
        f"LKSMN x{report['scale']} (default hyperparameters)",
        f"  parameters:  {report['parameters']:,} ({report['parameters'] / 1e3:.1f}K)",
        f"  Multi-Adds:  {report['multi_adds'] / 1e9:.2f} G for a {report['input'][1]}x{report['input'][0]} input "
        f"-> {report['output'][1]}x{report['output'][0]} output",
    ]
    if 'peak_memory' in report:
        peak = report['peak_memory']
        shown = 'not measurable here' if peak is None else f'{peak / 2**20:.0f} MiB'
        lines.append(f"  peak memory of one forward pass ({report['device']}, no grad, fp32): {shown}")
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m lksmn_arch.archs.complexity',
        description='Print the parameter count of the default LKSMN, its Multi-Adds for a 1280x720 output '
        '(the lightweight-SR convention: input 1280/s x 720/s; counted with torch.utils.flop_counter, '
        'convolutions and matrix products, FLOPs / 2), and the peak memory of one forward pass at that size.')
    parser.add_argument('--scale', type=int, default=4, choices=SUPPORTED_SCALES, help='upscaling factor (default 4)')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                        help='where to measure peak memory (default auto: CUDA if available)')
    parser.add_argument('--no-memory', action='store_true', help='skip the (real) forward pass that measures memory')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = complexity_report(args.scale, args.device, measure_memory=not args.no_memory)
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
