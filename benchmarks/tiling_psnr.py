"""How far tiled output is from whole-image output, on a real photo (not a test: a measurement).

LKSMN's MDTA attends over its whole input, so cross-faded tiles cannot reproduce whole-image output exactly;
this measures the gap as PSNR (RGB, peak 1) between the two, for several tile paddings, and the same for exact
tiles (``Upscaler(exact_tiles=True)``, with their largest pixel difference). ``--timing`` also times whole-image,
cross-faded and exact tiles, interleaved, best of ``--repeats``, and ``--json`` writes every figure to a file. The photo is one of
scikit-image's samples, downscaled by the model's scale with bicubic interpolation. With a checkpoint
(``-m``) it also gives the PSNR of each output against the original photo, i.e. what tiling costs in
quality; without one the network has random weights (seeded), which measures only the tiling gap.

    python benchmarks/tiling_psnr.py                           # random-weight default LKSMN x4
    python benchmarks/tiling_psnr.py -m net_g_latest.pth --tile 64 --tile-pad 0 16 32
    python benchmarks/tiling_psnr.py --shipped --photo astronaut --no-downscale --tile 128 --tile-pad 32 \\
        --timing --json benchmarks/results/exact_tiles_cpu.json
"""
import json
import time
from pathlib import Path
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


def load_photo(name: str, scale: int, downscale: bool = True) -> Dict[str, np.ndarray]:
    """{'hr': the photo cropped to a multiple of ``scale``, 'lr': it downscaled by ``scale``}, float32 RGB; with
    ``downscale`` off, 'lr' is the photo itself (an input of the photo's size) and there is no 'hr'."""
    from skimage import data
    if name not in PHOTOS:
        raise ValueError(f'--photo must be one of {list(PHOTOS)}, got {name!r}')
    hr = getattr(data, name)()[..., :3]
    if not downscale:
        return {'lr': hr.astype(np.float32) / 255}
    height, width = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    hr = hr[:height, :width].astype(np.float32) / 255
    lr = np.clip(cv2.resize(hr, (width // scale, height // scale), interpolation=cv2.INTER_CUBIC), 0, 1)
    return {'hr': hr, 'lr': lr}


def tiled_vs_whole_psnr(checkpoint: Optional[str] = None, *, tile: int = 64,
                        tile_pads: Sequence[int] = (0, 8, 16, 32), scale: int = 4, photo: str = 'astronaut',
                        device: str = 'cpu', seed: int = 0, downscale: bool = True, timing: bool = False,
                        repeats: int = 3) -> List[Dict[str, object]]:
    """PSNR of tiled against whole-image output for each of ``tile_pads`` and for exact tiles (and against the
    photo with a checkpoint and ``downscale``). ``scale`` is used only without a checkpoint (random weights,
    seeded by ``seed``). ``timing``: seconds of each, interleaved, best of ``repeats``."""
    if checkpoint:
        model, config = build_model_from_checkpoint(checkpoint)
        scale = int(config['upscale'])
    else:
        torch.manual_seed(seed)
        model = LKSMN(upscale=scale).eval()
    images = load_photo(photo, scale, downscale)
    runners = {'whole': Upscaler(model, tile=0, device=device, progress=False)}
    for pad in tile_pads:
        runners[f'pad {pad}'] = Upscaler(model, tile=tile, tile_pad=pad, device=device, progress=False)
    runners['exact'] = Upscaler(model, tile=tile, exact_tiles=True, device=device, progress=False)
    outputs, seconds = {}, {name: float('inf') for name in runners}
    for _ in range(repeats if timing else 1):
        for name, runner in runners.items():  # interleaved, so that a slow moment of the machine hits all
            started = time.perf_counter()
            outputs[name] = runner.upscale_image(images['lr'])
            seconds[name] = min(seconds[name], time.perf_counter() - started)
    whole = outputs['whole']
    rows: List[Dict[str, object]] = []
    for name, runner in runners.items():
        if name == 'whole':
            continue
        out = outputs[name]
        row: Dict[str, object] = {'tiles': 'exact' if name == 'exact' else 'cross-faded', 'tile': tile,
                                  'tile_pad': runner.tile_pad, 'psnr_tiled_vs_whole': psnr(out, whole),
                                  'max_abs_diff': float(np.abs(out - whole).max())}
        if checkpoint and downscale:
            row['psnr_whole_vs_photo'] = psnr(whole, images['hr'])
            row['psnr_tiled_vs_photo'] = psnr(out, images['hr'])
        if timing:
            row.update(seconds=seconds[name], seconds_whole=seconds['whole'],
                       seconds_vs_whole=seconds[name] / seconds['whole'])
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
    parser.add_argument('--shipped', action='store_true', help='the shipped model for --scale instead of -m')
    parser.add_argument('--no-downscale', action='store_true',
                        help='upscale the photo itself (an input of its size) rather than its downscaled copy')
    parser.add_argument('--timing', action='store_true', help='also time whole-image, cross-faded and exact tiles')
    parser.add_argument('--repeats', type=int, default=3, help='with --timing: best of this many (default 3)')
    parser.add_argument('--json', type=Path, default=None, help='write the figures to this JSON file')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.shipped:
        from lksmn_arch.weights.shipped import default_model
        args.model = str(default_model(args.scale).path)
    try:
        rows = tiled_vs_whole_psnr(args.model, tile=args.tile, tile_pads=args.tile_pad, scale=args.scale,
                                   photo=args.photo, device=args.device, seed=args.seed,
                                   downscale=not args.no_downscale, timing=args.timing, repeats=args.repeats)
    except (OSError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    weights = args.model or f'random weights (seed {args.seed}), default LKSMN x{args.scale}'
    photo_line = f'{args.photo}, ' + ('downscaled bicubic' if not args.no_downscale else 'as the input')
    lines = [f'{photo_line}; model: {Path(weights).name if args.model else weights}; {torch.get_num_threads()} threads',
             '']
    header = '| tiles | tile | context | PSNR tiled vs whole (dB) | largest difference |'
    with_photo = 'psnr_whole_vs_photo' in rows[0]
    if with_photo:
        header += ' PSNR whole vs photo | PSNR tiled vs photo |'
    if args.timing:
        header += ' seconds (whole image) | time vs whole image |'
    lines += [header, '|' + '---|' * (header.count('|') - 1)]
    for row in rows:
        line = (f"| {row['tiles']} | {row['tile']} | {row['tile_pad']} | {row['psnr_tiled_vs_whole']:.2f} | "
                f"{row['max_abs_diff']:.2e} |")
        if with_photo:
            line += f" {row['psnr_whole_vs_photo']:.2f} | {row['psnr_tiled_vs_photo']:.2f} |"
        if args.timing:
            line += f" {row['seconds']:.2f} ({row['seconds_whole']:.2f}) | {row['seconds_vs_whole']:.2f}x |"
        lines.append(line)
    print('\n'.join(lines))
    if args.json:
        from lksmn_arch.utils.atomic import replace_atomically
        from lksmn_arch.utils.cpus import cpu_label
        shown = ' '.join(['python benchmarks/tiling_psnr.py', *(sys.argv[1:] if argv is None else argv)])
        text = json.dumps({'command': shown, 'cpu': cpu_label(), 'threads': torch.get_num_threads(),
                           'rows': rows, 'markdown': lines}, indent=1) + '\n'
        args.json.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(args.json, lambda temp: temp.write_text(text), durable=False)
    return 0


if __name__ == '__main__':
    sys.exit(main())
