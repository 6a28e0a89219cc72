"""``lksmn-prepare``: BasicSR data sets (DF2K/DIV2K sub-images and LMDBs, benchmark GTmod/LRbicx pairs, the
open-photos set); arguments and messages over ``lksmn_arch.data.prepare`` and ``lksmn_arch.data.open_photos``."""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from lksmn_arch.data.open_photos import prepare_open_photos
from lksmn_arch.data.prepare import (DEFAULT_SCALES, DEFAULT_WORKERS, PrepareError, SubImageSettings,
                                     prepare_benchmark, prepare_div2k)


_DESCRIPTION = """\
Prepare datasets for training and testing LKSMN with BasicSR.

  div2k      HR training images (DIV2K, Flickr2K, DF2K = both folders, or any folder) ->
             paired HR/LR sub-image folders (+ LMDBs) for BasicSR's PairedImageDataset
  benchmark  a test set (Set5, Set14, B100, Urban100, Manga109) -> GTmod{s}/ and LRbicx{s}/
  open-photos  rebuild the open-photos set (real photos under free licences from Debian packages)

LR images are MATLAB-compatible bicubic (basicsr.utils.matlab_functions.imresize, antialiased).
Inputs are read as BasicSR reads them (OpenCV IMREAD_COLOR): grayscale images become 3 channels,
alpha is dropped, 16-bit becomes 8-bit. Outputs are PNG. Re-running the same command resumes:
finished files and complete LMDBs are kept. Run '%(prog)s div2k -h', '%(prog)s benchmark -h' or '%(prog)s open-photos -h'."""

_DIV2K_EPILOG = """\
outputs (in OUT):
  NAME_HR_sub/                HR sub-images, CROPxCROP, e.g. 0001_s001.png (s001 = first grid
                              position, row by row)
  NAME_LR_bicubic_X{s}_sub/   LR sub-images, (CROP/s)x(CROP/s), the same file names
  NAME_HR_sub.lmdb/           the same as BasicSR LMDBs (keys = file names without .png, with
  NAME_LR_bicubic_X{s}_sub.lmdb/  meta_info.txt), unless --no-lmdb

Each HR image is mod-cropped to a multiple of lcm(scales) (12 for 2 3 4), so one HR set serves all
scales; its LR image is bicubic at exactly H/s x W/s. Sub-images follow BasicSR's grid: positions
0, STEP, 2*STEP, ... plus a last row/column flush with the border when more than THRESH pixels would
be left; the LR sub-image of an HR sub-image at (y, x) is at (y/s, x/s). Images smaller than CROP
are skipped with a warning. CROP and STEP must be multiples of lcm(scales).

re-running: sub-images that exist are kept (each is written under a temporary name and renamed when
complete); an LMDB is built as OUT/.tmp-<folder>.lmdb and renamed into place when complete, so one
under its final name is complete and is left alone (a leftover .tmp-* from an interrupted run is
deleted and rebuilt). Changed --crop/--step/--thresh/lcm(scales) for an existing output is refused.
--overwrite deletes this run's folders and LMDBs first and redoes them.

unreadable images are named; the others are still processed, then the command stops (status 1)
before the LMDBs, unless --skip-unreadable.

example (DF2K):
  %(prog)s --hr datasets/DIV2K/DIV2K_train_HR datasets/Flickr2K/Flickr2K_HR --out datasets/DF2K --name DF2K"""

_BENCHMARK_EPILOG = """\
outputs (in OUT), for each scale s:
  GTmod{s}/    HR images mod-cropped to a multiple of s, as PNG (<stem>.png)
  LRbicx{s}/   their MATLAB bicubic downscale, exactly (H/s)x(W/s), the same file names

These are what test option files read, e.g. dataroot_gt: datasets/Set5/GTmod4 and
dataroot_lq: datasets/Set5/LRbicx4. Existing pairs are kept on re-running; --overwrite deletes the
GTmod{s}/LRbicx{s} folders of the scales asked and redoes them.

example:
  %(prog)s --hr datasets/benchmark/Set5/HR --out datasets/Set5"""


_OPEN_PHOTOS_EPILOG = """\
outputs (in OUT):
  debs/                               the .deb files (unless --debs)
  photos/train/, photos/test/         the normalised HR photos (<id>.png)
  openphotos_train_HR_sub(.lmdb)/     BasicSR sub-images of the training split, 240x240 every 180 px
  openphotos_train_LR_bicubic_X{s}_sub(.lmdb)/   their MATLAB bicubic LR, s = 2, 3, 4
  openphotos_test/GTmod{s}/, LRbicx{s}/          the held-out split (20 photos)
  demo_heldout/GTmod{s}/, LRbicx{s}/             the demo's three held-out photos (scikit-image)
  CREDITS.md                          every photo used, with its author and licence

Lossy WebP photos and photos over 3000 px are halved (INTER_AREA) before they become HR. Each photo's
stored bytes are checked against the manifest's sha256. Re-running resumes: finished files are kept.

example:
  %(prog)s --out datasets/openphotos
  %(prog)s --out datasets/openphotos --debs ~/Downloads/debs   # machines without apt"""


def build_parser() -> argparse.ArgumentParser:
    """The ``lksmn-prepare`` argument parser."""
    parser = argparse.ArgumentParser(prog='lksmn-prepare', description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', metavar='{div2k,benchmark,open-photos}', required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument('--scales', type=int, nargs='+', default=list(DEFAULT_SCALES), metavar='S',
                         help='upscaling factors (default: 2 3 4)')
        sub.add_argument('--workers', type=int, default=DEFAULT_WORKERS, metavar='N',
                         help=f'worker processes (default: min(4, CPU count) = {DEFAULT_WORKERS}; 1 = no subprocess)')
        sub.add_argument('--overwrite', action='store_true',
                         help="delete this run's existing outputs first and redo them")
        sub.add_argument('--skip-unreadable', action='store_true',
                         help='go on without images that cannot be read (named in a warning) instead of stopping')

    div2k = commands.add_parser('div2k', help='HR training images -> paired HR/LR sub-images (+ LMDBs)',
                                description='Make BasicSR paired sub-image sets (and LMDBs) from HR training images '
                                '(DIV2K, Flickr2K, DF2K = both folders, any folder).',
                                epilog=_DIV2K_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    div2k.add_argument('--hr', type=Path, nargs='+', required=True, metavar='DIR',
                       help='folder(s) of HR images, not searched recursively (DF2K: DIV2K_train_HR Flickr2K_HR)')
    div2k.add_argument('--out', type=Path, required=True, help='output folder, e.g. datasets/DF2K')
    div2k.add_argument('--name', required=True, help='prefix of the outputs, e.g. DF2K')
    div2k.add_argument('--crop', type=int, default=480, help='HR sub-image size (default: 480)')
    div2k.add_argument('--step', type=int, default=240, help='HR grid step (default: 240)')
    div2k.add_argument('--thresh', type=int, default=0,
                       help='add a last row/column flush with the border when more than this many HR pixels '
                       'are left over (default: 0)')
    div2k.add_argument('--no-lmdb', action='store_true', help='only write the PNG folders')
    common(div2k)

    bench = commands.add_parser('benchmark', help='test set -> GTmod{s}/ and LRbicx{s}/',
                                description='Make GTmod{s}/ and LRbicx{s}/ of a benchmark test set.',
                                epilog=_BENCHMARK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument('--hr', type=Path, required=True, metavar='DIR', help='folder of the HR images')
    bench.add_argument('--out', type=Path, required=True, help='output folder, e.g. datasets/Set5')
    common(bench)

    photos = commands.add_parser('open-photos', help='rebuild the open-photos set from Debian packages',
                                 description='Rebuild the open-photos data set: real photographs under free licences '
                                 'that Debian packages ship (lksmn_arch/data/open_photos.json names each one), '
                                 'as a BasicSR training split (x2, x3, x4 sub-images and LMDBs), a held-out '
                                 'benchmark split and a credits file.',
                                 epilog=_OPEN_PHOTOS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    photos.add_argument('--out', type=Path, required=True, help='output folder, e.g. datasets/openphotos')
    photos.add_argument('--debs', type=Path, default=None, metavar='DIR',
                        help='a folder of already downloaded .deb files (read only); default: OUT/debs, filled by '
                        'apt-get download')
    photos.add_argument('--workers', type=int, default=DEFAULT_WORKERS, metavar='N',
                        help=f'worker processes (default: {DEFAULT_WORKERS})')
    photos.add_argument('--no-lmdb', action='store_true', help='only write the PNG folders')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``lksmn-prepare``; returns the exit status (2: input refused, 1: the work failed; one line
    on stderr either way)."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print('lksmn-prepare: error: --workers must be at least 1', file=sys.stderr)
        return 2
    try:
        if args.command == 'open-photos':
            prepare_open_photos(args.out, debs=args.debs, workers=args.workers, lmdb=not args.no_lmdb)
        elif args.command == 'div2k':
            settings = SubImageSettings(tuple(sorted(set(args.scales))), args.crop, args.step, args.thresh)
            prepare_div2k(args.hr, args.out, args.name, settings, workers=args.workers, lmdb=not args.no_lmdb,
                          overwrite=args.overwrite, skip_unreadable=args.skip_unreadable)
        else:
            prepare_benchmark(args.hr, args.out, args.scales, workers=args.workers, overwrite=args.overwrite,
                              skip_unreadable=args.skip_unreadable)
    except PrepareError as error:
        print(f'lksmn-prepare: error: {error}', file=sys.stderr)
        return error.exit_status
    except OSError as error:  # a folder that cannot be created or written (read-only filesystem, full disk)
        where = error.filename or args.out
        print(f'lksmn-prepare: error: cannot write {where} ({error.strerror or error}); finished images are kept',
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('\nlksmn-prepare: interrupted; re-run the same command to resume', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
