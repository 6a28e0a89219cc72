"""``lksmn-upscale``: upscale image files with an LKSMN checkpoint, the shipped model or an ONNX export (arguments
and messages over ``lksmn_arch.inference.files.upscale_paths``)."""
import argparse
import sys
from typing import Optional, Sequence

from lksmn_arch.inference.choices import (ALPHA_MODES, BACKENDS, DEFAULT_MAX_PIXELS, DEVICES, OUTPUT_EXTENSIONS,
                                          PRECISION_NAMES, parse_max_pixels)
from lksmn_arch.inference.memory import parse_memory


def _tile_value(text: str):
    """--tile: 'auto' or an integer (checked further by the Upscaler)."""
    if text == 'auto':
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number of pixels, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='lksmn-upscale',
        description='Upscale images (a file or a folder) with an LKSMN checkpoint, or with an ONNX export of one '
        '(--backend onnxruntime|openvino). RGB, gray, RGBA, 8- and 16-bit images; EXIF orientation is applied. '
        'Unreadable files are reported and skipped (exit status 1 at the end).')
    parser.add_argument('-i', '--input', required=True, help='an image file or a folder of images')
    parser.add_argument('-o', '--output', required=True, help='output folder (created if missing)')
    parser.add_argument('-m', '--model', default=None,
                        help='LKSMN checkpoint (.pth), or an .onnx file from lksmn-export (backends auto, '
                        'onnxruntime, openvino). Default: the model shipped in the package for --scale '
                        '(docs/models.md)')
    parser.add_argument('--scale', type=int, default=None,
                        help='without -m: which shipped model runs (default 4); with -m, checked against the model')
    parser.add_argument('--tile', default='auto', type=_tile_value,
                        help='auto (default): the whole image when its pass fits in the memory this process may use '
                        '(about 1 GiB for the passes by default, --max-memory to change it), else the largest tiles '
                        'that fit; 0: the whole image at once (refused if it cannot fit); N: tiles of N input pixels. '
                        'Tiled output differs slightly from whole-image output unless --exact-tiles (docs/upscaling.md)')
    parser.add_argument('--exact-tiles', action='store_true',
                        help='tiles whose output equals the whole image\'s (MDTA\'s statistics summed over the tiles '
                        'first; about twice the work of blended tiles; PyTorch backend)')
    parser.add_argument('--max-memory', default=None, metavar='SIZE',
                        help='with --tile auto: memory the passes and the output may take together, e.g. 6G or '
                        '512M (default: the output plus 1 GiB, within what is free)')
    parser.add_argument('--tile-pad', type=int, default=32,
                        help='context pixels around each tile, also the half-width of the blending band (default 32)')
    parser.add_argument('--device', default='auto', choices=DEVICES, help='default auto: CUDA if available')
    parser.add_argument('--precision', default='fp32', choices=PRECISION_NAMES,
                        help='fp32 (default), bf16 (PyTorch and OpenVINO), or fp16 (CUDA only; refused on the CPU)')
    parser.add_argument('--tta', action='store_true', help='x8 self-ensemble (flips/rotations averaged; 8x slower)')
    parser.add_argument('--suffix', default=None, help='added to output file names (default _x<scale>)')
    parser.add_argument('--ext', default='auto', choices=OUTPUT_EXTENSIONS,
                        help='output format; auto keeps the input format, but uses png where the input format '
                        'would lose alpha or 16 bits (default auto)')
    parser.add_argument('--backend', default='auto', choices=BACKENDS,
                        help='auto (default): the fastest path for the request. On the CPU in fp32 or bf16: '
                        'OpenVINO (the openvino extra), else ONNX Runtime in fp32 (the onnx extra), on an export '
                        'of the checkpoint made once, verified and cached (LKSMN_CACHE_DIR, default '
                        '~/.cache/lksmn_arch/onnx); PyTorch (fused, channels_last) on CUDA, for fp16, with '
                        '--compile, or when neither is installed. torch, onnxruntime, openvino: that backend '
                        '(-m a checkpoint, or an .onnx file from lksmn-export for the last two)')
    parser.add_argument('--alpha', default='network', choices=ALPHA_MODES,
                        help='how an alpha channel is upscaled: through the network (default) or bicubic')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the network (with freezing). Each new input size compiles once (tens '
                        'of seconds on a CPU), so it pays off for many images of one size or for --tile; see '
                        'docs/speed.md')
    parser.add_argument('--overwrite', action='store_true', help='replace output files that exist (default: skip them)')
    parser.add_argument('--max-pixels', default=str(DEFAULT_MAX_PIXELS),
                        help=f'refuse inputs with more pixels than this, checked from the header before decoding '
                        f'(default {DEFAULT_MAX_PIXELS:.0e})')
    parser.add_argument('--quiet', action='store_true',
                        help='no progress bars (the model and backend lines, warnings and errors are still printed)')
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``lksmn-upscale``: 0 if every image was written, 1 if some failed, 2 on set-up errors."""
    args = build_parser().parse_args(argv)
    try:  # argument errors are answered before torch and BasicSR load
        max_pixels = parse_max_pixels(args.max_pixels)
        max_memory = None if args.max_memory is None else parse_memory(args.max_memory)
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    try:
        import lksmn_arch
        lksmn_arch.load()  # torch, BasicSR and the compatibility fixes (a Ctrl-C meanwhile is one line too)
        from lksmn_arch.inference.files import upscale_paths
        report = upscale_paths(args.input, args.output, args.model, tile=args.tile, tile_pad=args.tile_pad,
                               max_memory=max_memory,
                               device=args.device, precision=args.precision, tta=args.tta, suffix=args.suffix,
                               ext=args.ext, backend=args.backend, alpha=args.alpha, progress=not args.quiet,
                               compile=args.compile, scale=args.scale, overwrite=args.overwrite,
                               max_pixels=max_pixels, exact_tiles=args.exact_tiles, log=print)
    except (OSError, ValueError) as error:
        if args.debug:
            raise
        print(f'error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('\nlksmn-upscale: interrupted; finished images are complete, no partial file was left',
              file=sys.stderr)
        return 130
    print(f'{len(report.written)} image(s) written to {args.output}')
    if report.skipped:
        print(f'{len(report.skipped)} image(s) skipped: ' + '; '.join(f'{p.name}: {why}' for p, why in report.skipped[:3])
              + (' ...' if len(report.skipped) > 3 else ''))
    if report.failed:
        print(f'{len(report.failed)} image(s) failed: {", ".join(str(path) for path, _ in report.failed)} '
              f'(reasons above)', file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == '__main__':
    sys.exit(main())
