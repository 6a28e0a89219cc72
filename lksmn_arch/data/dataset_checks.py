"""Check BasicSR dataset options before training starts, and name the file when a sample fails.

BasicSR's datasets fail late and obscurely on a wrong dataroot, an empty folder, unpaired GT/LQ
folders or a GT that is not ``scale`` times its LQ (often as an ``AttributeError`` inside a
DataLoader worker). ``check_dataset_options`` catches these up front, reading only image headers
(disk) or ``meta_info.txt`` (LMDB); ``name_files_in_sample_errors`` makes any remaining failure at
load time say which files it was loading.
"""
import functools
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image

MAX_HEADER_CHECKS = 4000  # beyond this many pairs, an evenly spaced sample is checked up front
_META_LINE = re.compile(r'^(\S+)\s+\((\d+),\s*(\d+),\s*(\d+)\)')


class DatasetError(ValueError):
    """A dataset option or file that cannot be used; the message names the key, path or file."""


def _list_images(folder: Path) -> List[Path]:
    """The files BasicSR's folder datasets read: every non-hidden file directly in ``folder``."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.'))


def _image_size(path: Path) -> Tuple[int, int]:
    """(height, width) from the file header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as error:
        raise DatasetError(f'cannot read image {path}: {error}') from error
    return height, width


def _read_meta_info(lmdb_path: Path, where: str) -> Dict[str, Tuple[int, int]]:
    meta = lmdb_path / 'meta_info.txt'
    if not (lmdb_path / 'data.mdb').is_file() or not meta.is_file():
        raise DatasetError(f'{where}: {lmdb_path} is not a complete LMDB (needs data.mdb and meta_info.txt); '
                           f'make it with lksmn-prepare')
    shapes = {}
    for number, line in enumerate(meta.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = _META_LINE.match(line)
        if not match:
            raise DatasetError(f'{meta}: line {number} is not "<name> (h,w,c) <level>": {line!r}')
        shapes[os.path.splitext(match.group(1))[0]] = (int(match.group(2)), int(match.group(3)))
    if not shapes:
        raise DatasetError(f'{where}: {meta} lists no images')
    return shapes


def _check_ratio(gt_size: Tuple[int, int], lq_size: Tuple[int, int], scale: int, gt_name: str, lq_name: str,
                 where: str) -> None:
    if gt_size != (lq_size[0] * scale, lq_size[1] * scale):
        raise DatasetError(f'{where}: GT {gt_name} is {gt_size[1]}x{gt_size[0]} but its LQ {lq_name} is '
                           f'{lq_size[1]}x{lq_size[0]}; with scale {scale} the GT must be exactly {scale} times the LQ')


def _dataroot(dataset_opt: Dict[str, Any], key: str, where: str) -> Path:
    value = dataset_opt.get(key)
    if not value:
        raise DatasetError(f'{where}: missing key {key}')
    path = Path(os.path.expanduser(str(value)))
    if not path.exists():
        raise DatasetError(f'{where}.{key}: {value} does not exist')
    return path


def _check_patch_size(gt_sizes: Dict[str, Tuple[int, int]], patch_size: Optional[int], where: str,
                      listed_in: str) -> None:
    """Every training GT must hold a ``gt_size`` patch: BasicSR's random crop fails on a smaller one (in a
    DataLoader worker, mid-epoch). ``gt_sizes``: name -> (height, width)."""
    if not patch_size or not isinstance(patch_size, int) or not gt_sizes:
        return
    small = {name: size for name, size in gt_sizes.items() if min(size) < patch_size}
    if small:
        name, (height, width) = min(small.items(), key=lambda item: min(item[1]))
        raise DatasetError(f'{where}.gt_size {patch_size} is larger than the training GT images: {len(small)} of '
                           f'{len(gt_sizes)} {listed_in} are smaller, e.g. {name} ({width}x{height}); lower gt_size '
                           f'or make larger sub-images')


def _check_paired_lmdb(gt_root: Path, lq_root: Path, scale: Optional[int], where: str,
                       patch_size: Optional[int] = None) -> None:
    gt, lq = _read_meta_info(gt_root, f'{where}.dataroot_gt'), _read_meta_info(lq_root, f'{where}.dataroot_lq')
    _check_patch_size({f'{gt_root}:{key}': size for key, size in gt.items()}, patch_size, where,
                      f'GT images listed in {gt_root / "meta_info.txt"}')
    if gt.keys() != lq.keys():
        missing = sorted(set(gt) ^ set(lq))[:5]
        raise DatasetError(f'{where}: the GT LMDB {gt_root} ({len(gt)} images) and the LQ LMDB {lq_root} '
                           f'({len(lq)} images) do not hold the same keys, e.g. {missing}')
    if scale:
        for key in gt:
            _check_ratio(gt[key], lq[key], scale, f'{gt_root}:{key}', f'{lq_root}:{key}', where)


def _check_paired_folders(dataset_opt: Dict[str, Any], gt_root: Path, lq_root: Path, scale: Optional[int],
                          where: str, patch_size: Optional[int] = None) -> None:
    template = dataset_opt.get('filename_tmpl', '{}')
    meta_file = dataset_opt.get('meta_info_file')
    if meta_file:
        if not Path(meta_file).is_file():
            raise DatasetError(f'{where}.meta_info_file: {meta_file} does not exist')
        names = [line.split(' ')[0] for line in Path(meta_file).read_text().splitlines() if line.strip()]
        gt_files = [gt_root / name for name in names]
    else:
        gt_files = _list_images(gt_root)
    lq_files = _list_images(lq_root)
    if not gt_files:
        raise DatasetError(f'{where}.dataroot_gt: no images in {gt_root}')
    if not lq_files:
        raise DatasetError(f'{where}.dataroot_lq: no images in {lq_root}')
    if not meta_file and len(gt_files) != len(lq_files):
        raise DatasetError(f'{where}: {gt_root} has {len(gt_files)} GT images but {lq_root} has {len(lq_files)} '
                           f'LQ images; they must pair one to one')
    lq_by_name = {p.relative_to(lq_root).as_posix(): p for p in lq_files}
    pairs = []
    for gt in gt_files:
        relative = gt.relative_to(gt_root)
        stem, suffix = os.path.splitext(relative.as_posix())
        lq_name = template.format(stem) + suffix
        if lq_name not in lq_by_name:
            raise DatasetError(f'{where}: GT {gt} has no LQ partner {lq_root / lq_name}')
        pairs.append((gt, lq_by_name[lq_name]))
    step = max(1, len(pairs) // MAX_HEADER_CHECKS)
    gt_sizes = {}
    for gt, lq in pairs[::step]:
        if not gt.is_file():
            raise DatasetError(f'{where}: GT image {gt} (listed in {meta_file}) does not exist')
        gt_size, lq_size = _image_size(gt), _image_size(lq)
        gt_sizes[str(gt)] = gt_size
        if scale:
            _check_ratio(gt_size, lq_size, scale, str(gt), str(lq), where)
    sample = '' if step == 1 else f' (a sample of one in {step})'
    _check_patch_size(gt_sizes, patch_size, where, f'GT images in {gt_root}{sample}')


def check_dataset_options(dataset_opt: Dict[str, Any], scale: Optional[int], where: str,
                          patch_size: Optional[int] = None) -> None:
    """Check one ``datasets.<phase>`` entry; ``where`` names it in messages. ``patch_size``: the training
    ``gt_size``, which every GT image (of a paired dataset) must hold (checked from headers or ``meta_info.txt``)."""
    if not isinstance(dataset_opt, dict):
        raise DatasetError(f'{where}: must be a mapping of dataset options')
    dataset_type = dataset_opt.get('type')
    if not dataset_type:
        raise DatasetError(f'{where}: missing key type')
    backend = (dataset_opt.get('io_backend') or {}).get('type')
    if not backend:
        raise DatasetError(f'{where}: missing key io_backend.type (disk or lmdb)')
    if dataset_type == 'PairedImageDataset':
        gt_root, lq_root = _dataroot(dataset_opt, 'dataroot_gt', where), _dataroot(dataset_opt, 'dataroot_lq', where)
        if backend == 'lmdb':
            _check_paired_lmdb(gt_root, lq_root, scale, where, patch_size)
        elif backend == 'disk':
            _check_paired_folders(dataset_opt, gt_root, lq_root, scale, where, patch_size)
    elif dataset_type == 'SingleImageDataset':
        lq_root = _dataroot(dataset_opt, 'dataroot_lq', where)
        if backend == 'lmdb':
            _read_meta_info(lq_root, f'{where}.dataroot_lq')
        elif backend == 'disk':
            files = _list_images(lq_root)
            if not files:
                raise DatasetError(f'{where}.dataroot_lq: no images in {lq_root}')
            for path in files[::max(1, len(files) // MAX_HEADER_CHECKS)]:
                _image_size(path)
    else:
        for key in ('dataroot_gt', 'dataroot_lq'):
            if dataset_opt.get(key):
                _dataroot(dataset_opt, key, where)


def _wrap_getitem(dataset_class: type) -> None:
    original = dataset_class.__getitem__
    if getattr(original, '_lksmn_names_files', False):
        return

    @functools.wraps(original)
    def __getitem__(self, index):
        try:
            return original(self, index)
        except DatasetError:
            raise
        except Exception as error:
            paths = getattr(self, 'paths', None)
            item = paths[index] if isinstance(paths, list) and 0 <= index < len(paths) else f'index {index}'
            name = self.opt.get('name', dataset_class.__name__)
            raise DatasetError(f'dataset {name}: cannot load sample {item}: {type(error).__name__}: {error}') from error

    __getitem__._lksmn_names_files = True
    dataset_class.__getitem__ = __getitem__


def name_files_in_sample_errors() -> None:
    """Make BasicSR's image datasets name the files of a sample that fails to load."""
    from basicsr.data.paired_image_dataset import PairedImageDataset
    from basicsr.data.single_image_dataset import SingleImageDataset
    for dataset_class in (PairedImageDataset, SingleImageDataset):
        _wrap_getitem(dataset_class)
