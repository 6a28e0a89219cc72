"""``lksmn-demo``: the embedded demo (``lksmn_arch.training.demo.run_demo``): train LKSMN x4 on scikit-image's
photos and score it against bicubic."""
import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from lksmn_arch.training.demo import DEMO_FAILURES, DemoOutputError, check_output_folder, run_demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='lksmn-demo',
        description='Train LKSMN x4 on real photos shipped with scikit-image (no download), then run BasicSR\'s '
        'test pipeline on three held-out photos and print PSNR/SSIM (Y channel) of LKSMN next to bicubic and to the '
        'model shipped in the package. '
        'Writes OUT/data, OUT/options, OUT/experiments, OUT/results and OUT/comparison.png '
        '(crops of bicubic, LKSMN and ground truth side by side).')
    parser.add_argument('--out', type=Path, default=Path('demo_output'), help='output folder (default demo_output)')
    parser.add_argument('--iters', type=int, default=2000, help='training iterations (default 2000)')
    parser.add_argument('--batch', type=int, default=8, help='batch size (default 8, 64x64 GT patches)')
    parser.add_argument('--overwrite', action='store_true',
                        help='delete OUT first even if the demo did not make it (a previous demo output is '
                        'always replaced)')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.iters < 1 or args.batch < 1:
        print('lksmn-demo: error: --iters and --batch must be positive', file=sys.stderr)
        return 2
    try:
        replace = check_output_folder(args.out, args.overwrite)
    except DemoOutputError as error:
        print(f'lksmn-demo: error: {error}', file=sys.stderr)
        return 2
    if replace:
        print(f'lksmn-demo: replacing {args.out}', flush=True)
        shutil.rmtree(args.out)
    started = time.time()
    try:
        result = run_demo(args.out, args.iters, args.batch)
    except KeyboardInterrupt:
        print(f'\nlksmn-demo: interrupted; {args.out} is incomplete (a re-run replaces it)', file=sys.stderr)
        return 130
    except DEMO_FAILURES as error:
        print(f'lksmn-demo: error: {" ".join(str(error).split())}', file=sys.stderr)
        return 1
    timings = result['timings']
    print(f'\nLKSMN x4 demo: {args.iters} iterations; data {timings["data"]:.0f} s, training {timings["train"]:.0f} s, '
          f'test {timings["test"]:.0f} s, total {time.time() - started:.0f} s')
    print('Held-out photos (PSNR dB / SSIM on Y, border 4):\n')
    print(result['table'])
    verdict = 'above' if result['psnr_gain'] > 0 else 'NOT above'
    print(f'\nLKSMN is {verdict} bicubic by {result["psnr_gain"]:+.2f} dB on average.')
    if result.get('shipped_gain') is not None:
        print(f'The shipped model (trained longer on more data, docs/models.md): {result["shipped_gain"]:+.2f} dB '
              'over bicubic on the same photos.')
    print(f'Comparison picture: {result["figure"]}\nCheckpoint: {result["checkpoint"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
