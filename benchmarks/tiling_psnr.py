"""How far tiled output is from whole-image output, on a real photo (not a test: a measurement).

LKSMN's MDTA attends over its whole input, so tiled inference cannot reproduce whole-image output exactly;
this measures the gap as PSNR (RGB, peak 1) between the two, for several tile paddings. The photo is one of
scikit-image's samples, downscaled by the model's scale with bicubic interpolation. With a checkpoint
(``-m``) it also gives the PSNR of each output against the original photo, i.e. what tiling costs in
quality; without one the network has random weights (seeded), which measures only the tiling gap.

    python benchmarks/tiling_psnr.py                           # random-weight default LKSMN x4
    python benchmarks/tiling_psnr.py -m net_g_latest.pth --tile 64 --tile-pad 0 16 32
"""
import argparse
import sys
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.utils.checkpoint import build_model_from_checkpoint
from lksmn_arch.inference.upscaler import Upscaler, psnr

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')


def load_photo(name: str, scale: int) -> Dict[str, np.ndarray]:
    """{'hr': the photo cropped to a multiple of ``scale``, 'lr': it downscaled by ``scale``}, float32 RGB."""
    from skimage import data
    if name not in PHOTOS:
        raise ValueError(f'--photo must be one of {list(PHOTOS)}, got {name!r}')
    hr = getattr(data, name)()[..., :3]
    height, width = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    hr = hr[:height, :width].astype(np.float32) / 255
    lr = np.clip(cv2.resize(hr, (width // scale, height // scale), interpolation=cv2.INTER_CUBIC), 0, 1)
    return {'hr': hr, 'lr': lr}


def tiled_vs_whole_psnr(checkpoint: Optional[str] = None, *, tile: int = 64,
                        tile_pads: Sequence[int] = (0, 8, 16, 32), scale: int = 4, photo: str = 'astronaut',
                        device: str = 'cpu', seed: int = 0) -> List[Dict[str, object]]:
    """PSNR of tiled against whole-image output for each of ``tile_pads`` (and against the photo with a
    checkpoint). ``scale`` is used only without a checkpoint (random weights, seeded by ``seed``)."""
    if checkpoint:
        model, config = build_model_from_checkpoint(checkpoint)
        scale = int(config['upscale'])
    else:
        torch.manual_seed(seed)
        model = LKSMN(upscale=scale).eval()
    images = load_photo(photo, scale)
    whole = Upscaler(model, device=device, progress=False).upscale_image(images['lr'])
    rows: List[Dict[str, object]] = []
    for pad in tile_pads:
        tiled = Upscaler(model, tile=tile, tile_pad=pad, device=device, progress=False).upscale_image(images['lr'])
        row: Dict[str, object] = {'tile': tile, 'tile_pad': pad, 'psnr_tiled_vs_whole': psnr(tiled, whole)}
        if checkpoint:
            row['psnr_whole_vs_photo'] = psnr(whole, images['hr'])
            row['psnr_tiled_vs_photo'] = psnr(tiled, images['hr'])
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python benchmarks/tiling_psnr.py',
        description='PSNR between tiled and whole-image LKSMN output on a scikit-image sample photo. Without -m '
        'the network has random (seeded) weights.')
    parser.add_argument('-m', '--model', default=None, help='LKSMN checkpoint (default: random-weight default LKSMN)')
    parser.add_argument('--scale', type=int, default=4, choices=(2, 3, 4), help='scale without -m (default 4)')
    parser.add_argument('--tile', type=int, default=64, help='tile size in input pixels (default 64)')
    parser.add_argument('--tile-pad', type=int, nargs='+', default=[0, 8, 16, 32],
                        help='tile paddings to measure (default 0 8 16 32)')
    parser.add_argument('--photo', default='astronaut', choices=PHOTOS, help='scikit-image sample (default astronaut)')
    parser.add_argument('--device', default='cpu', choices=('auto', 'cpu', 'cuda'), help='default cpu')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights (default 0)')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = tiled_vs_whole_psnr(args.model, tile=args.tile, tile_pads=args.tile_pad, scale=args.scale,
                                   photo=args.photo, device=args.device, seed=args.seed)
    except (OSError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    weights = args.model or f'random weights (seed {args.seed}), default LKSMN x{args.scale}'
    print(f'{args.photo}, downscaled bicubic; model: {weights}')
    header = '| tile | tile_pad | PSNR tiled vs whole (dB) |'
    if args.model:
        header += ' PSNR whole vs photo | PSNR tiled vs photo |'
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    for row in rows:
        line = f"| {row['tile']} | {row['tile_pad']} | {row['psnr_tiled_vs_whole']:.2f} |"
        if args.model:
            line += f" {row['psnr_whole_vs_photo']:.2f} | {row['psnr_tiled_vs_photo']:.2f} |"
        print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
