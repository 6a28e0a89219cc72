"""``lksmn-export``: an LKSMN checkpoint to ONNX (verified against PyTorch) or .safetensors (arguments and messages
over ``lksmn_arch.inference.export``)."""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from lksmn_arch.inference.export import (DEFAULT_OPSET, VERIFY_SHAPES, VERIFY_TOLERANCE, check_outputs,
                                         export_checkpoint, export_safetensors)
from lksmn_arch.utils.checkpoint import load_state_dict


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='lksmn-export',
        description='Export an LKSMN checkpoint to ONNX (dynamic batch, height and width; torch dynamo '
        'exporter), then check it against PyTorch with ONNX Runtime; and/or write its weights as .safetensors. '
        'Existing outputs are refused unless --overwrite; the input checkpoint is never overwritten.')
    parser.add_argument('-m', '--model', required=True,
                        help='LKSMN checkpoint (.pth, BasicSR or bare state dict, or .safetensors)')
    parser.add_argument('--onnx', default=None, help='output .onnx file (written atomically)')
    parser.add_argument('--safetensors', default=None,
                        help='output .safetensors file: the weights (EMA ones where the checkpoint has them) with '
                        'the network configuration as metadata, for spandrel-based tools')
    parser.add_argument('--overwrite', action='store_true', help='replace output files that exist')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip the ONNX Runtime vs PyTorch check after the export')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``lksmn-export``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.onnx is None and args.safetensors is None:
        parser.error('give --onnx FILE, --safetensors FILE or both')
    try:
        outputs = [Path(p) for p in (args.onnx, args.safetensors) if p is not None]
        check_outputs(outputs, [Path(args.model)], overwrite=args.overwrite)
        if args.safetensors is not None:
            path, config = export_safetensors(args.model, args.safetensors)
            print(f'wrote {path} (x{config["upscale"]}, {len(load_state_dict(path))} tensors, configuration in '
                  'its metadata)')
        if args.onnx is None:
            return 0
        # the exported graph is the exact inference form; the check compares it with the training form
        path, config, diff = export_checkpoint(args.model, args.onnx, opset=args.opset, verify=not args.no_verify)
        print(f'wrote {path} (x{config["upscale"]}, opset {args.opset}, dynamic batch/height/width, fused for '
              f'inference)')
        if diff is not None:
            shapes = ', '.join(f'{b}x{h}x{w}' for b, h, w in VERIFY_SHAPES)
            print(f'ONNX Runtime vs PyTorch, max abs difference on {shapes}: {diff:.2e}')
            if not diff < VERIFY_TOLERANCE:
                print(f'error: the difference exceeds {VERIFY_TOLERANCE:g}', file=sys.stderr)
                return 1
    except (OSError, ValueError, RuntimeError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('\nlksmn-export: interrupted; no partial file was left', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
