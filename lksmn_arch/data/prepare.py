"""Data preparation for training and testing LKSMN with BasicSR.

``lksmn-prepare div2k`` turns HR training images (DIV2K, Flickr2K, DF2K = both, or any folder) into
BasicSR's paired sub-image sets, as BasicSR's ``extract_subimages.py`` and MATLAB bicubic LR do::

    lksmn-prepare div2k --hr datasets/DIV2K/DIV2K_train_HR datasets/Flickr2K/Flickr2K_HR \\
        --out datasets/DF2K --name DF2K --scales 2 3 4

    OUT/NAME_HR_sub/                 0001_s001.png ...   HR sub-images (crop x crop)
    OUT/NAME_LR_bicubic_X{s}_sub/    0001_s001.png ...   LR sub-images (crop/s x crop/s), same names
    OUT/NAME_HR_sub.lmdb, OUT/NAME_LR_bicubic_X{s}_sub.lmdb   the same, as BasicSR LMDBs (unless --no-lmdb)

Each HR image is mod-cropped to a multiple of lcm(scales), so one HR sub-image set serves every
scale; its full LR image is MATLAB bicubic (``basicsr.utils.matlab_functions.imresize``) and the
sub-images sit on BasicSR's grid (``crop``/``step`` at HR, ``crop/s``/``step/s`` at LR, plus a last
row/column flush with the border when more than ``thresh`` pixels would be left over), so the HR
sub-image at (y, x) is exactly the region of the LR sub-image at (y/s, x/s).

``lksmn-prepare benchmark`` writes ``OUT/GTmod{s}/`` (HR mod-cropped to a multiple of s) and
``OUT/LRbicx{s}/`` (MATLAB bicubic of that, H/s x W/s) for a test set (Set5, Set14, B100, Urban100,
Manga109).

Inputs are read with OpenCV's IMREAD_COLOR, as BasicSR reads images: grayscale and palette images
become 3 channels, an alpha channel is dropped, 16-bit images are reduced to 8 bits. Outputs are
8-bit 3-channel PNGs.

Re-running resumes: every PNG is written under a hidden temporary name and renamed into place, so an
existing file is complete and is not redone; an LMDB is built as ``OUT/.tmp-<folder>.lmdb`` and
renamed into place only when complete, so an LMDB under its final name is complete and is left
alone. Each output folder records its settings in a hidden ``.lksmn-prepare.json``; a re-run with
different settings is refused (``--overwrite`` deletes this run's outputs and redoes them).
"""
import errno
import functools
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from basicsr.data.transforms import mod_crop
from basicsr.utils.img_util import imfrombytes
from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from basicsr.utils.matlab_functions import imresize

from lksmn_arch.utils.atomic import replace_atomically

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pnm')
PNG_COMPRESSION = 3  # BasicSR's extract_subimages.py default
LMDB_COMPRESSION = 1  # make_lmdb_from_imgs's default (it re-encodes every image)
MANIFEST_NAME = '.lksmn-prepare.json'
TEMP_SUFFIX = '.tmp'
LMDB_TEMP_PREFIX = '.tmp-'
DEFAULT_SCALES = (2, 3, 4)
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
STATUSES = ('written', 'skipped', 'too_small', 'unreadable', 'failed')
# write errors that no other image would escape: the run stops at the first one instead of trying them all
SYSTEMATIC_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class PrepareError(Exception):
    """A problem with the input or the existing output, explained for the user (exit status 2)."""

    exit_status = 2


class PrepareFailure(PrepareError):
    """The input was accepted but the work failed (images that could not be processed, a full disk, a
    download that failed): exit status 1."""

    exit_status = 1


class UnreadableImageError(PrepareError):
    """An input file that cannot be read or decoded as an image."""


@dataclass(frozen=True)
class SubImageSettings:
    """Geometry of the sub-image grid, in HR pixels."""

    scales: Tuple[int, ...] = DEFAULT_SCALES
    crop: int = 480
    step: int = 240
    thresh: int = 0

    @property
    def modulus(self) -> int:
        """HR images are mod-cropped to a multiple of this: lcm of the scales."""
        return math.lcm(*self.scales)

    def validate(self) -> None:
        """Raise PrepareError unless every scale maps the grid onto whole LR pixels."""
        _check_scales(self.scales)
        if self.crop <= 0 or self.step <= 0 or self.thresh < 0:
            raise PrepareError(f'--crop and --step must be positive and --thresh >= 0 '
                               f'(got crop {self.crop}, step {self.step}, thresh {self.thresh})')
        if self.crop % self.modulus or self.step % self.modulus:
            raise PrepareError(f'--crop {self.crop} and --step {self.step} must both be multiples of '
                               f'{self.modulus} = lcm of the scales {" ".join(map(str, self.scales))}, so that '
                               'LR sub-images have whole-pixel sizes and positions')

    def manifest(self, scale: int) -> Dict[str, int]:
        """What an output folder records about how it was made (scale 1 = the HR folder)."""
        return {'crop': self.crop, 'step': self.step, 'thresh': self.thresh, 'modulus': self.modulus, 'scale': scale}


@dataclass
class ImageResult:
    """What happened to one input image. ``names`` are its output file names (set for written/skipped)."""

    source: str
    status: str
    names: List[str] = field(default_factory=list)
    message: str = ''
    systematic: bool = False  # a failure every other image would meet too (full disk, read-only folder)


@dataclass
class PrepareSummary:
    """Outcome of one run: per-image results, the output folders and the LMDBs (path -> 'built'/'up to date')."""

    results: List[ImageResult]
    folders: List[Path]
    lmdbs: Dict[Path, str] = field(default_factory=dict)

    def count(self, status: str) -> int:
        """Number of input images that ended with ``status``."""
        return sum(r.status == status for r in self.results)

    @property
    def names(self) -> List[str]:
        """Sorted output file names, the same in every output folder."""
        return sorted(n for r in self.results for n in r.names)


# ----------------------------------------------------------------------------------------------------
# Image operations


def grid_positions(length: int, crop: int, step: int, thresh: int = 0) -> List[int]:
    """Top (or left) positions of BasicSR's sub-image grid along one side of ``length`` pixels.

    ``0, step, 2*step, ...`` while a crop fits, plus ``length - crop`` when more than ``thresh``
    pixels would be left over. Empty when ``length < crop``.
    """
    if length < crop:
        return []
    positions = list(range(0, length - crop + 1, step))
    if length - (positions[-1] + crop) > thresh:
        positions.append(length - crop)
    return positions


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(img, 1/scale, 'bicubic')`` of a uint8 HxWxC image whose sides are multiples of scale.

    Uses BasicSR's MATLAB-compatible ``imresize`` (antialiased) and rounds half up, as MATLAB does.
    """
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f'image of {h}x{w} is not a multiple of the scale {scale}; mod-crop it first')
    out = imresize(img.astype(np.float32) / 255., 1 / scale)
    out = np.clip(np.floor(out * 255. + 0.5), 0, 255).astype(np.uint8)
    if out.shape[:2] != (h // scale, w // scale):
        raise RuntimeError(f'imresize gave {out.shape[:2]} for {h}x{w} at 1/{scale}')
    return out


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-bicubic upscaling of a uint8 image: the 'Bicubic' row of SR papers and of our model card."""
    up = imresize(lr.astype(np.float64) / 255.0, scale)
    return np.clip(np.round(up * 255.0), 0, 255).astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """Read an image as uint8 BGR with 3 channels (BasicSR's ``imfrombytes``, OpenCV IMREAD_COLOR)."""
    try:
        content = Path(path).read_bytes()
    except OSError as error:
        raise UnreadableImageError(f'{path}: cannot be read ({error.strerror or error})') from None
    img = None
    if content:
        try:
            img = imfrombytes(content, flag='color')
        except cv2.error:
            img = None
    if img is None:
        raise UnreadableImageError(f'{path}: not a readable image (OpenCV cannot decode it)')
    return img


def write_png_atomic(img: np.ndarray, path: Path, compression: int = PNG_COMPRESSION) -> None:
    """Write a PNG under a hidden temporary name in the same folder, then rename it into place."""
    ok, encoded = cv2.imencode('.png', np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise OSError(f'OpenCV could not encode {path.name}')
    replace_atomically(path, lambda temp: temp.write_bytes(encoded.tobytes()), suffix=TEMP_SUFFIX, durable=False)


# ----------------------------------------------------------------------------------------------------
# Output layout


def hr_sub_folder(out: Path, name: str) -> Path:
    """``OUT/NAME_HR_sub``."""
    return Path(out) / f'{name}_HR_sub'


def lr_sub_folder(out: Path, name: str, scale: int) -> Path:
    """``OUT/NAME_LR_bicubic_X{scale}_sub``."""
    return Path(out) / f'{name}_LR_bicubic_X{scale}_sub'


def lmdb_path(folder: Path) -> Path:
    """The LMDB of a sub-image folder: ``<folder>.lmdb`` next to it."""
    return folder.with_name(folder.name + '.lmdb')


def gtmod_folder(out: Path, scale: int) -> Path:
    """``OUT/GTmod{scale}``."""
    return Path(out) / f'GTmod{scale}'


def lrbic_folder(out: Path, scale: int) -> Path:
    """``OUT/LRbicx{scale}``."""
    return Path(out) / f'LRbicx{scale}'


# ----------------------------------------------------------------------------------------------------
# Workers (module-level so that they can be sent to worker processes)


def extract_subimages(source: str, settings: SubImageSettings, out: str, name: str) -> ImageResult:
    """Make the HR and LR sub-images of one HR image; files that already exist are kept.

    Never raises: problems come back as an ``unreadable``/``failed`` result naming the file.
    """
    path = Path(source)
    try:
        img = read_image(path)
    except UnreadableImageError as error:
        return ImageResult(source, 'unreadable', message=str(error))
    try:
        img = mod_crop(img, settings.modulus)
        h, w = img.shape[:2]
        tops = grid_positions(h, settings.crop, settings.step, settings.thresh)
        lefts = grid_positions(w, settings.crop, settings.step, settings.thresh)
        if not tops or not lefts:
            return ImageResult(source, 'too_small',
                               message=f'{path}: {h}x{w} after mod-crop, smaller than the {settings.crop}x'
                               f'{settings.crop} crop; no sub-images')
        boxes = [(top, left) for top in tops for left in lefts]  # row by row, as BasicSR numbers them
        names = [f'{path.stem}_s{index:03d}.png' for index in range(1, len(boxes) + 1)]
        targets = [(hr_sub_folder(Path(out), name), 1)] + [(lr_sub_folder(Path(out), name, s), s)
                                                           for s in settings.scales]
        written = False
        for folder, scale in targets:
            missing = [(box, n) for box, n in zip(boxes, names) if not (folder / n).exists()]
            if not missing:
                continue
            full = img if scale == 1 else bicubic_downscale(img, scale)
            size = settings.crop // scale
            for (top, left), n in missing:
                y, x = top // scale, left // scale
                write_png_atomic(full[y:y + size, x:x + size], folder / n)
            written = True
        return ImageResult(source, 'written' if written else 'skipped', names)
    except Exception as error:  # reported by the main process with the file name
        return _failure(source, path, error)


def _failure(source: str, path: Path, error: Exception) -> ImageResult:
    """The ``failed`` result of one image; a write error every image would meet is marked ``systematic``."""
    if isinstance(error, OSError) and error.errno in SYSTEMATIC_ERRNOS:
        where = Path(error.filename).parent if error.filename else 'the output folder'
        return ImageResult(source, 'failed', systematic=True,
                           message=f'cannot write to {where} ({error.strerror}); stopped at {path.name}')
    return ImageResult(source, 'failed', message=f'{path}: {type(error).__name__}: {error}')


def make_benchmark_pair(source: str, scales: Tuple[int, ...], out: str) -> ImageResult:
    """Write GTmod{s}/<stem>.png and LRbicx{s}/<stem>.png of one HR image for every scale; keeps existing pairs."""
    path = Path(source)
    try:
        img = read_image(path)
    except UnreadableImageError as error:
        return ImageResult(source, 'unreadable', message=str(error))
    file_name = path.stem + '.png'
    try:
        written = False
        for scale in scales:
            gt_path = gtmod_folder(Path(out), scale) / file_name
            lr_path = lrbic_folder(Path(out), scale) / file_name
            if gt_path.exists() and lr_path.exists():
                continue
            gt = mod_crop(img, scale)
            if gt.shape[0] < scale or gt.shape[1] < scale:
                return ImageResult(source, 'too_small', message=f'{path}: smaller than the scale {scale}')
            lr = bicubic_downscale(gt, scale)
            write_png_atomic(gt, gt_path)
            write_png_atomic(lr, lr_path)
            written = True
        return ImageResult(source, 'written' if written else 'skipped', [file_name])
    except Exception as error:  # reported by the main process with the file name
        return _failure(source, path, error)


def _init_worker() -> None:
    """Worker processes: one thread each, and leave Ctrl-C to the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def run_images(work: Callable[[str], ImageResult], sources: Sequence[str], workers: int,
               desc: str) -> List[ImageResult]:
    """Run ``work`` over ``sources`` in ``workers`` processes (1: in this process) with a progress bar."""
    results: List[ImageResult] = []
    counts = {status: 0 for status in STATUSES}
    workers = max(1, min(workers, len(sources)))
    with tqdm(total=len(sources), desc=desc, unit='img', dynamic_ncols=True) as bar:

        def record(result: ImageResult) -> None:
            if result.systematic:  # leaving the pool's context terminates the other workers
                raise PrepareFailure(f'{result.message}; finished images are kept: free space or fix the '
                                   'permissions, then re-run the same command to resume')
            results.append(result)
            counts[result.status] += 1
            bar.set_postfix({k.replace('_', ' '): v for k, v in counts.items() if v}, refresh=False)
            bar.update()
            if result.status in ('unreadable', 'failed'):
                bar.write(f'  {result.status}: {result.message}', file=sys.stderr)

        if workers == 1:
            for source in sources:
                record(work(source))
        else:
            # spawn, not fork: forking a process that already runs torch/onnxruntime threads can deadlock the children
            with multiprocessing.get_context('spawn').Pool(workers, initializer=_init_worker) as pool:
                for result in pool.imap_unordered(work, sources):
                    record(result)
    order = {source: i for i, source in enumerate(sources)}
    return sorted(results, key=lambda r: order[r.source])


# ----------------------------------------------------------------------------------------------------
# Inputs and existing outputs


def _check_scales(scales: Sequence[int]) -> None:
    if not scales or any(int(s) != s or s < 2 for s in scales):
        raise PrepareError(f'scales must be integers >= 2 (got {" ".join(map(str, scales))})')


def list_images(folders: Sequence[Path]) -> List[Path]:
    """Image files (by extension, hidden files ignored, not recursive) of each folder, sorted by name.

    Raises PrepareError naming the folder when it is missing, not a folder or holds no image, and
    naming both files when two have the same stem (their outputs would collide).
    """
    images: List[Path] = []
    seen_folders = set()
    for folder in map(Path, folders):
        if not folder.exists():
            raise PrepareError(f'HR folder {folder} does not exist')
        if not folder.is_dir():
            raise PrepareError(f'HR folder {folder} is not a folder')
        if folder.resolve() in seen_folders:
            raise PrepareError(f'HR folder {folder} is given twice')
        seen_folders.add(folder.resolve())
        found = sorted(p for p in folder.iterdir()
                       if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith('.') and p.is_file())
        if not found:
            raise PrepareError(f'HR folder {folder} holds no images (looked for {" ".join(IMAGE_EXTENSIONS)})')
        images.extend(found)
    by_stem: Dict[str, Path] = {}
    for path in images:
        if path.stem in by_stem:
            raise PrepareError(f'{by_stem[path.stem]} and {path} have the same name {path.stem!r}; their outputs '
                               'would overwrite each other. Rename one of them.')
        by_stem[path.stem] = path
    return images


def _check_lmdb_keys(images: Sequence[Path]) -> None:
    """LMDB keys are the stems; BasicSR needs them ASCII and cuts meta_info names at the first '.'."""
    for path in images:
        stem = path.stem
        if not stem.isascii() or '.' in stem or any(c.isspace() for c in stem):
            raise PrepareError(f'{path}: LMDB keys are file names without extension and BasicSR needs them '
                               'ASCII without dots or spaces; rename the file (or pass --no-lmdb)')


def _read_manifest(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _write_manifest(folder: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True) + '\n'
    replace_atomically(folder / MANIFEST_NAME, lambda temp: temp.write_text(text), suffix=TEMP_SUFFIX,
                       durable=False)


def _visible_files(folder: Path) -> List[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith('.')] if folder.is_dir() else []


def check_output_folder(folder: Path, manifest: dict, describe: Callable[[dict], str]) -> None:
    """Raise PrepareError when ``folder`` holds files made with other settings or by something else."""
    if folder.exists() and not folder.is_dir():
        raise PrepareError(f'{folder} exists and is not a folder')
    if not folder.is_dir():
        return
    recorded = _read_manifest(folder)
    if recorded is None and _visible_files(folder):
        raise PrepareError(f'{folder} already holds files that lksmn-prepare did not make (no {MANIFEST_NAME}); '
                           'move it away, choose another --out/--name, or pass --overwrite to delete and redo it')
    if recorded is not None and recorded != manifest:
        raise PrepareError(f'{folder} was made with {describe(recorded)}, but this run asks for '
                           f'{describe(manifest)}. Use the same settings to resume, another --out/--name, '
                           'or --overwrite to delete and redo it')


def open_output_folder(folder: Path, manifest: dict) -> None:
    """Create ``folder`` (or keep it), delete temporary files an interrupted run left, record ``manifest``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob('.*' + TEMP_SUFFIX):
        stale.unlink()
    _write_manifest(folder, manifest)


def check_inputs_apart(inputs: Sequence[Path], outputs: Sequence[Path], flag: str = '--hr') -> None:
    """PrepareError when an input folder is an output folder or lies inside one: the run would write among
    (and ``--overwrite`` delete) the very images it reads. Checked before anything is written or deleted."""
    for source in inputs:
        real_source = Path(source).resolve()
        for output in outputs:
            real_output = Path(output).resolve()
            if real_source == real_output or real_output in real_source.parents:
                raise PrepareError(f'{flag} {source} is inside the output folder {output}, which this run writes '
                                   '(and --overwrite deletes): choose an --out that does not hold the input images')


def _describe_geometry(manifest: dict) -> str:
    return (f'crop {manifest.get("crop")}, step {manifest.get("step")}, thresh {manifest.get("thresh")}, '
            f'HR mod-crop to multiples of {manifest.get("modulus")}')


def _describe_scale(manifest: dict) -> str:
    return f'scale {manifest.get("scale")}'


def remove_for_overwrite(paths: Sequence[Path]) -> None:
    """--overwrite: delete these output folders and files; refused (before any is deleted) when one is a
    symbolic link, which lksmn-prepare never deletes through."""
    for path in paths:
        if path.is_symlink():
            raise PrepareError(f'--overwrite would delete {path}, which is a symbolic link (to {os.readlink(path)}); '
                               'lksmn-prepare does not delete through links: remove the link or choose another --out')
    for path in paths:
        _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        print(f'  --overwrite: deleting {path}', flush=True)
        shutil.rmtree(path)
    elif path.exists():
        print(f'  --overwrite: deleting {path}', flush=True)
        path.unlink()


# ----------------------------------------------------------------------------------------------------
# LMDB


def lmdb_temp_path(folder: Path) -> Path:
    """Where the LMDB of ``folder`` is built before it is renamed into place: ``.tmp-<folder>.lmdb``."""
    return folder.with_name(f'{LMDB_TEMP_PREFIX}{folder.name}.lmdb')


def lmdb_is_complete(path: Path) -> bool:
    """Whether ``path`` is a finished LMDB: a folder with data.mdb and BasicSR's meta_info.txt."""
    return path.is_dir() and (path / 'data.mdb').is_file() and (path / 'meta_info.txt').is_file()


def lmdb_keys(path: Path) -> List[str]:
    """Keys listed in an LMDB's meta_info.txt (file names without extension), sorted."""
    lines = (path / 'meta_info.txt').read_text().splitlines()
    return sorted(line.split(' ')[0].rsplit('.', 1)[0] for line in lines if line.strip())


def check_lmdb_target(folder: Path) -> None:
    """Before any work: refuse an LMDB path that exists but is not complete (not ours, or interrupted elsewhere)."""
    path = lmdb_path(folder)
    if path.exists() and not lmdb_is_complete(path):
        raise PrepareError(f'{path} exists but is not a complete LMDB (no data.mdb or meta_info.txt). Delete it, '
                           'or pass --overwrite')


def build_lmdb(folder: Path, names: Sequence[str]) -> str:
    """Make ``<folder>.lmdb`` of the PNG files ``names`` of ``folder`` with BasicSR's ``make_lmdb_from_imgs``.

    Returns 'up to date' when a complete LMDB with exactly these keys exists (left alone), 'built'
    otherwise. The LMDB is written to ``.tmp-<folder>.lmdb`` (a leftover from an interrupted run is
    deleted first) and renamed into place when complete. Raises PrepareError when a complete LMDB
    with other keys exists.
    """
    final = lmdb_path(folder)
    keys = [Path(n).stem for n in names]
    if lmdb_is_complete(final):
        existing = lmdb_keys(final)
        if existing == sorted(keys):
            return 'up to date'
        raise PrepareError(f'{final} is complete but holds {len(existing)} images while {folder.name} now has '
                           f'{len(keys)} (images were added or removed since it was built). Delete it (rm -r '
                           f'{final}) and re-run to rebuild it from the folder')
    check_lmdb_target(folder)
    temp = lmdb_temp_path(folder)
    if temp.is_symlink():  # not ours: an interrupted run leaves a folder; never build through a link
        raise PrepareError(f'{temp} is a symbolic link, not an LMDB this tool left; remove it and re-run')
    if temp.exists():
        print(f'  deleting {temp}, an incomplete LMDB left by an interrupted run', flush=True)
        shutil.rmtree(temp)
    data_bytes = sum((folder / n).stat().st_size for n in names)
    # make_lmdb_from_imgs re-encodes at PNG level 1 (a little larger than our files) and LMDB rounds
    # large values up to 4 KiB pages; its own estimate (first image x 10) fails on small sets.
    map_size = 2 * data_bytes + 8192 * len(names) + 64 * 1024**2
    make_lmdb_from_imgs(str(folder), str(temp), list(names), keys, compress_level=LMDB_COMPRESSION,
                        multiprocessing_read=False, map_size=map_size)
    written = lmdb_keys(temp) if lmdb_is_complete(temp) else []
    if written != sorted(keys):
        raise PrepareFailure(f'building {final} wrote {len(written)} of {len(keys)} images; left in {temp}')
    os.replace(temp, final)
    return 'built'


# ----------------------------------------------------------------------------------------------------
# Sub-commands


def _report_problems(results: Sequence[ImageResult], skip_unreadable: bool) -> None:
    """Print warnings for skipped images; raise PrepareError for unreadable (unless skipped) and failed ones."""
    too_small = [r for r in results if r.status == 'too_small']
    unreadable = [r for r in results if r.status == 'unreadable']
    failed = [r for r in results if r.status == 'failed']
    for r in too_small:
        print(f'warning: skipped {r.message}', file=sys.stderr)
    if unreadable and skip_unreadable:
        for r in unreadable:
            print(f'warning: --skip-unreadable: left out {r.message}', file=sys.stderr)
    problems = failed + ([] if skip_unreadable else unreadable)
    if problems:
        listed = '\n  '.join(r.message for r in problems[:20])
        more = f'\n  ... and {len(problems) - 20} more' if len(problems) > 20 else ''
        hint = ('Fix or remove these files and re-run the same command (finished images are skipped)'
                + ('' if failed else ', or pass --skip-unreadable to go on without them') + '.')
        raise PrepareFailure(f'{len(problems)} image(s) could not be processed (the others were):\n  {listed}{more}\n'
                           f'{hint}')


def _status_line(results: Sequence[ImageResult]) -> str:
    parts = [f'{sum(r.status == s for r in results)} {label}'
             for s, label in (('written', 'written'), ('skipped', 'already done'), ('too_small', 'too small'),
                              ('unreadable', 'unreadable'), ('failed', 'failed'))]
    return f'{len(results)} images: ' + ', '.join(parts)


def prepare_div2k(hr_folders: Sequence[Path], out: Path, name: str, settings: SubImageSettings = SubImageSettings(),
                  workers: int = DEFAULT_WORKERS, lmdb: bool = True, overwrite: bool = False,
                  skip_unreadable: bool = False) -> PrepareSummary:
    """Make ``NAME_HR_sub``, ``NAME_LR_bicubic_X{s}_sub`` (and their LMDBs) in ``out``; see the module docstring.

    Resumes over earlier output. Raises PrepareError for bad input, output made with other settings,
    and images that could not be processed (after processing all the others).
    """
    settings.validate()
    if not name or any(c in name for c in '/\\') or name.startswith('.'):
        raise PrepareError(f'--name {name!r} must be a plain name (no path separators, not hidden)')
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrepareError(f'--out {out} exists and is not a folder')
    images = list_images(hr_folders)
    if lmdb:
        _check_lmdb_keys(images)
    hr_folder = hr_sub_folder(out, name)
    folders = [hr_folder] + [lr_sub_folder(out, name, s) for s in settings.scales]
    scales_text = ' '.join(map(str, settings.scales))
    print(f'lksmn-prepare div2k: {len(images)} HR images from {", ".join(map(str, hr_folders))}', flush=True)
    print(f'  scales {scales_text}: HR mod-cropped to multiples of {settings.modulus}; sub-images '
          f'{settings.crop}x{settings.crop} every {settings.step} px at HR, '
          + ', '.join(f'{settings.crop // s}/{settings.step // s} at X{s}' for s in settings.scales)
          + f'; extra last row/column when more than {settings.thresh} px are left', flush=True)

    check_inputs_apart(hr_folders, [f for folder in folders
                                    for f in (folder, lmdb_path(folder), lmdb_temp_path(folder))])
    if overwrite:
        remove_for_overwrite([f for folder in folders for f in (folder, lmdb_path(folder), lmdb_temp_path(folder))])
    manifests = [settings.manifest(scale) for scale in (1,) + settings.scales]
    for folder, manifest in zip(folders, manifests):
        check_output_folder(folder, manifest, _describe_geometry)
        if lmdb:
            check_lmdb_target(folder)
    for folder, manifest in zip(folders, manifests):
        open_output_folder(folder, manifest)

    steps = 2 if lmdb else 1
    print(f'[1/{steps}] sub-images -> {out}/ ({len(folders)} folders, {min(workers, len(images))} worker(s)); '
          'finished images are skipped', flush=True)
    work = functools.partial(extract_subimages, settings=settings, out=str(out), name=name)
    results = run_images(work, [str(p) for p in images], workers, desc='sub-images')
    summary = PrepareSummary(results, folders)
    print(f'  {_status_line(results)}; {len(summary.names)} sub-images in each folder', flush=True)
    _report_problems(results, skip_unreadable)
    if not summary.names:
        raise PrepareError(f'no sub-images: every image in {", ".join(map(str, hr_folders))} is smaller than the '
                           f'{settings.crop}x{settings.crop} crop (try a smaller --crop)')
    expected = set(summary.names)
    for folder in folders:
        extra = [p.name for p in _visible_files(folder) if p.name not in expected]
        if extra:
            print(f'warning: {folder} holds {len(extra)} file(s) not made from the current HR images '
                  f'(e.g. {extra[0]}); folder-mode training would read them, the LMDBs leave them out',
                  file=sys.stderr)

    if not lmdb and any(r.status == 'written' for r in results):
        stale = [lmdb_path(f) for f in folders if lmdb_path(f).exists()]
        if stale:
            print(f'warning: --no-lmdb: {stale[0]} (and others like it) exist and now miss the new sub-images; '
                  'delete them and re-run without --no-lmdb to rebuild', file=sys.stderr)
    if lmdb:
        print(f'[2/2] LMDBs (BasicSR make_lmdb_from_imgs), {len(summary.names)} images each', flush=True)
        for folder in folders:
            state = build_lmdb(folder, summary.names)
            summary.lmdbs[lmdb_path(folder)] = state
            print(f'  {lmdb_path(folder)}: {state}' + (', left alone' if state == 'up to date' else ''),
                  flush=True)
    print('done:', flush=True)
    for folder in folders:
        print(f'  {folder}/' + (f'  {lmdb_path(folder)}/' if lmdb else ''), flush=True)
    return summary


def prepare_benchmark(hr_folder: Path, out: Path, scales: Sequence[int] = DEFAULT_SCALES,
                      workers: int = DEFAULT_WORKERS, overwrite: bool = False,
                      skip_unreadable: bool = False) -> PrepareSummary:
    """Make ``OUT/GTmod{s}/`` and ``OUT/LRbicx{s}/`` of every HR image of ``hr_folder`` for each scale.

    Existing pairs are kept. Raises PrepareError for bad input, output it did not make, and images
    that could not be processed (after processing all the others).
    """
    scales = tuple(sorted(set(scales)))
    _check_scales(scales)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrepareError(f'--out {out} exists and is not a folder')
    images = list_images([hr_folder])
    folders = [f for s in scales for f in (gtmod_folder(out, s), lrbic_folder(out, s))]
    print(f'lksmn-prepare benchmark: {len(images)} HR images from {hr_folder}; scales {" ".join(map(str, scales))}',
          flush=True)
    check_inputs_apart([hr_folder], folders)
    if overwrite:
        remove_for_overwrite(folders)
    manifests = [{'kind': kind, 'scale': s} for s in scales for kind in ('GTmod', 'LRbicx')]
    for folder, manifest in zip(folders, manifests):
        check_output_folder(folder, manifest, _describe_scale)
    for folder, manifest in zip(folders, manifests):
        open_output_folder(folder, manifest)
    print(f'GTmod{{s}}/ and LRbicx{{s}}/ -> {out}/ ({min(workers, len(images))} worker(s)); '
          'finished images are skipped', flush=True)
    work = functools.partial(make_benchmark_pair, scales=scales, out=str(out))
    results = run_images(work, [str(p) for p in images], workers, desc='benchmark')
    print(f'  {_status_line(results)}', flush=True)
    _report_problems(results, skip_unreadable)
    print('done:', flush=True)
    for folder in folders:
        print(f'  {folder}/', flush=True)
    return PrepareSummary(results, folders)


# ----------------------------------------------------------------------------------------------------
# Command line
