"""What reduced precision costs in quality, with a trained checkpoint on real photos (a measurement, not a test).

Upscales the demo's held-out photos (scikit-image's astronaut, coffee, chelsea; MATLAB-bicubic LR of the
mod-cropped HR, as the benchmarks make them) with ``Upscaler`` in fp32 and in each reduced precision the
device offers (bf16 on CPU; bf16 and fp16 on CUDA), rounds to 8 bits, and reports PSNR/SSIM on Y (border =
scale, BasicSR's metrics, as the benchmarks count them) and the difference to fp32.

    python benchmarks/precision_psnr.py -m demo_output/experiments/LKSMN_x4_demo/models/net_g_latest.pth
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils.matlab_functions import imresize

from lksmn_arch.utils.checkpoint import build_model_from_checkpoint
from lksmn_arch.archs.complexity import resolve_device
from lksmn_arch.data.sample_photos import TEST_PHOTOS, _photo
from lksmn_arch.inference.upscaler import Upscaler
from lksmn_arch.inference.latency import runtime_installed
from lksmn_arch.inference.files import build_upscaler


def held_out_pairs(scale: int) -> Dict[str, Dict[str, np.ndarray]]:
    """{photo: {'hr': uint8 RGB mod-cropped, 'lr': float32 RGB MATLAB bicubic in [0, 1]}}."""
    pairs = {}
    for name in TEST_PHOTOS:
        hr = _photo(name)[0][..., ::-1]  # _photo gives BGR
        height, width = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
        hr = np.ascontiguousarray(hr[:height, :width])
        lr = np.clip(imresize(hr.astype(np.float32) / 255, 1 / scale), 0, 1).astype(np.float32)
        pairs[name] = {'hr': hr, 'lr': lr}
    return pairs


def precision_report(checkpoint: str, device: str = 'auto', precisions: Optional[Sequence[str]] = None) -> List[dict]:
    """One row per (precision, photo) and a mean row per precision, with the PSNR difference to fp32."""
    model, config = build_model_from_checkpoint(checkpoint)
    scale = int(config['upscale'])
    torch_device = resolve_device(device)
    if precisions is None:
        precisions = ['fp32', 'bf16'] + (['fp16'] if torch_device.type == 'cuda' else [])
        if torch_device.type == 'cpu' and runtime_installed('openvino'):
            precisions += ['openvino fp32', 'openvino bf16']  # lksmn-upscale's default CPU backend
    pairs = held_out_pairs(scale)
    scores: Dict[str, Dict[str, tuple]] = {}
    for precision in precisions:
        if precision.startswith('openvino '):
            upscaler = build_upscaler(checkpoint, backend='openvino', device='cpu',
                                      precision=precision.split()[1], progress=False)
        else:
            upscaler = Upscaler(model, device=torch_device, precision=precision, progress=False)
        for name, pair in pairs.items():
            sr = np.rint(upscaler.upscale_image(pair['lr']) * 255).astype(np.uint8)
            scores.setdefault(precision, {})[name] = (
                calculate_psnr(sr[..., ::-1], pair['hr'][..., ::-1], crop_border=scale, test_y_channel=True),
                calculate_ssim(sr[..., ::-1], pair['hr'][..., ::-1], crop_border=scale, test_y_channel=True))
    rows = []
    for precision, by_photo in scores.items():
        for name in list(by_photo) + ['mean']:
            if name == 'mean':
                psnr_value = float(np.mean([v[0] for v in by_photo.values()]))
                ssim_value = float(np.mean([v[1] for v in by_photo.values()]))
                reference = float(np.mean([v[0] for v in scores['fp32'].values()]))
            else:
                psnr_value, ssim_value = by_photo[name]
                reference = scores['fp32'][name][0]
            rows.append({'precision': precision, 'photo': name, 'psnr': psnr_value, 'ssim': ssim_value,
                         'psnr_minus_fp32': psnr_value - reference})
    return rows


def format_rows(rows: List[dict]) -> str:
    lines = ['| precision (path) | photo | PSNR (Y) | SSIM (Y) | PSNR - fp32 (dB) |', '|---|---|---:|---:|---:|']
    lines += [f"| {r['precision']} | {r['photo']} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['psnr_minus_fp32']:+.4f} |"
              for r in rows]
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python benchmarks/precision_psnr.py',
        description='PSNR/SSIM (Y, border = scale) of an LKSMN checkpoint on the demo\'s held-out photos in fp32 and '
        'in reduced precision (bf16; fp16 on CUDA), and through OpenVINO in fp32 and bf16 when it is installed '
        '(lksmn-upscale\'s default CPU backend), each with its difference to PyTorch fp32.')
    parser.add_argument('-m', '--model', required=True, help='a trained LKSMN checkpoint')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='default auto')
    parser.add_argument('--json', default=None, help='also write the rows here')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = precision_report(args.model, args.device)
    except (OSError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
