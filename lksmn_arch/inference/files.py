"""Upscale image files with an LKSMN checkpoint or an exported .onnx model (PyTorch, OpenVINO, ONNX Runtime).

    lksmn-upscale -i photos/ -o photos_x4/                   # the shipped x4 model (docs/models.md)
    lksmn-upscale -i photos/ -o photos_x4/ -m net_g_latest.pth --tile 256
    python -m lksmn_arch.cli.upscale -i photo.jpg -o out/ -m lksmn_x4.onnx --backend onnxruntime

Backend: ``--backend auto`` (the default) runs the fastest path for the request (``resolve_backend``): on
the CPU in fp32 or bf16, OpenVINO when installed, else ONNX Runtime in fp32, on an export of the
checkpoint's inference form made and verified once and cached (``onnx_cache_dir``); PyTorch (fused,
channels_last) on CUDA, for fp16, with ``--compile``, or when neither runtime is installed. Which one runs,
and why, is printed.

Images: RGB, grayscale (upscaled through the RGB network and averaged back to one channel), RGBA (alpha
through the network as a 3-channel replica by default, ``--alpha bicubic`` for OpenCV bicubic), 8- and
16-bit (the output keeps the bit depth). Pixels are decoded by OpenCV (``IMREAD_UNCHANGED`` keeps 16 bits
and alpha, but ignores EXIF orientation), and the EXIF orientation tag, read with Pillow, is applied to the
decoded array; outputs are written upright, without EXIF.

A file that cannot be read or upscaled is reported (name and reason) and skipped; the others go on and the
exit status is 1 at the end. Outputs are written atomically (a temporary file in the output folder, then
``os.replace``) and never onto an input file.
"""
import errno
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from lksmn_arch.utils.atomic import replace_atomically
from lksmn_arch.utils.cpus import runtime_threads
from lksmn_arch.inference.choices import (ALPHA_MODES, BACKENDS, DEFAULT_MAX_PIXELS, DEVICES, OUTPUT_EXTENSIONS,
                                          parse_max_pixels)
from lksmn_arch.inference.upscaler import Upscaler, check_tiling

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.tif', '.tiff')
_KEEPS_ALPHA = {'.png', '.webp', '.tif', '.tiff'}
_KEEPS_16_BIT = {'.png', '.tif', '.tiff'}
_EXIF_ORIENTATION = 0x0112
_LOSSY_QUALITY = 95
MAX_HEADER_BYTES = 64 * 2**20  # room for metadata (ICC profiles, EXIF thumbnails) beyond the pixels
# what Pillow calls the formats read here: PPM/PGM (OpenCV reads them too) are allowed, anything else refused
DECODED_FORMATS = {'PNG', 'JPEG', 'MPO', 'WEBP', 'BMP', 'DIB', 'TIFF', 'PPM'}
_STOPPING_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


@dataclass
class UpscaleReport:
    """What ``upscale_paths`` did: (input, output) pairs written, (input, reason) failures and skips, notes."""

    written: List[Tuple[Path, Path]] = field(default_factory=list)
    failed: List[Tuple[Path, str]] = field(default_factory=list)
    notes: List[Tuple[Path, str]] = field(default_factory=list)
    skipped: List[Tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


# --- reading ----------------------------------------------------------------------------------------------

def collect_inputs(inputs: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """Image files named by ``inputs``: files as given, folders' image files (by extension, sorted, not
    recursive). Raises FileNotFoundError for a missing path, ValueError when no image is found."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found: List[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f'input {item} does not exist')
    if not found:
        raise ValueError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {", ".join(map(str, items))}')
    return found


def exif_orientation(path: PathLike) -> int:
    """The EXIF orientation (1..8) of an image file, 1 when it has none or Pillow cannot read its header."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            value = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # Pillow raises many types for unreadable headers; orientation is then unknown
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an array stored with EXIF ``orientation`` upright (what Pillow's ImageOps.exif_transpose does)."""
    if orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1, :]
    elif orientation == 5:
        img = img.swapaxes(0, 1)
    elif orientation == 6:
        img = np.rot90(img, -1)
    elif orientation == 7:
        img = img.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        img = np.rot90(img, 1)
    return np.ascontiguousarray(img)


def check_header(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
    """(width, height) from the header, read with Pillow before any pixel is decoded; refuses an image larger
    than ``max_pixels``, with several frames (animations, multi-page TIFF), a file far larger than any image
    within the limit, and a file whose header Pillow cannot read (a header that cannot be read is no licence
    to decode whatever it holds: the size limit would not apply)."""
    from PIL import Image
    size = os.stat(path).st_size
    if size == 0:
        raise ValueError('the file is empty')
    largest = max_pixels * 8 + MAX_HEADER_BYTES  # 16-bit RGBA stored uncompressed, and its metadata
    if size > largest:
        raise ValueError(f'the file is {size / 2**30:.1f} GiB, larger than any image within --max-pixels '
                         f'{max_pixels / 1e6:.0f} MP could be; refusing to read it')
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # this check replaces Pillow's own
    try:
        with Image.open(path) as image:
            width, height = image.size
            frames = getattr(image, 'n_frames', 1)
            kind = image.format
    except Exception:  # Pillow raises many types for unknown or broken headers
        raise ValueError('cannot read its image header (not a PNG, JPEG, WebP, BMP or TIFF file, or a damaged '
                         'one), so its size cannot be checked before decoding: not read') from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    if width * height > max_pixels:
        raise ValueError(f'{width}x{height} = {width * height / 1e6:.0f} MP is over the limit of '
                         f'{max_pixels / 1e6:.0f} MP (its x4 output alone would take '
                         f'{width * height * 16 * 12 / 2**30:.1f} GiB); raise --max-pixels to process it')
    if frames > 1:
        raise ValueError(f'it has {frames} frames (an animation or a multi-page file); only single-frame images '
                         'are upscaled: extract the frames first')
    if kind not in DECODED_FORMATS:
        raise ValueError(f'it is a {kind} image, not one of {", ".join(sorted(DECODED_FORMATS))}: not read')
    return width, height


def read_image(path: PathLike) -> Tuple[np.ndarray, int]:
    """Decode ``path`` upright as RGB(A) or gray; returns (uint8/uint16 array, bit depth 8 or 16).

    Raises ValueError (with the reason) for a file that is empty, corrupt, or of an unsupported pixel type.
    """
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise ValueError('the file is empty')
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError('OpenCV cannot decode it as an image (corrupt, truncated, or not an image)')
    if img.dtype == np.uint8:
        depth = 8
    elif img.dtype == np.uint16:
        depth = 16
    else:
        raise ValueError(f'unsupported pixel type {img.dtype} (8- and 16-bit integer images are supported)')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    elif img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    elif img.ndim != 2:
        raise ValueError(f'unsupported channel layout {img.shape}')
    return apply_orientation(img, exif_orientation(path)), depth


# --- writing ----------------------------------------------------------------------------------------------

def output_path(input_path: Path, output_dir: Path, suffix: str, ext: str) -> Path:
    """Where ``input_path`` is written: ``output_dir/<stem><suffix>.<ext>``; 'auto' keeps png/jpg/jpeg/webp/
    tif/tiff and turns other formats (bmp) into png. ``write_image`` may still switch a jpg/webp to png to
    keep alpha or 16 bits; see ``_final_extension``."""
    if ext == 'auto':
        extension = input_path.suffix.lower()
        if extension not in ('.png', '.jpg', '.jpeg', '.webp', '.tif', '.tiff'):
            extension = '.png'
    else:
        extension = '.' + ext
    return output_dir / f'{input_path.stem}{suffix}{extension}'


def _final_extension(path: Path, has_alpha: bool, depth: int, ext: str) -> Tuple[Path, List[str]]:
    """With --ext auto, formats that would lose alpha or 16 bits become png; an explicit --ext is obeyed
    (with a note saying what is lost)."""
    notes = []
    extension = path.suffix.lower()
    loses_alpha = has_alpha and extension not in _KEEPS_ALPHA
    loses_depth = depth == 16 and extension not in _KEEPS_16_BIT
    if ext == 'auto' and (loses_alpha or loses_depth):
        return path.with_suffix('.png'), notes
    if loses_alpha:
        notes.append(f'{extension} has no alpha channel: alpha dropped')
    if loses_depth:
        notes.append(f'{extension} has no 16-bit mode: written as 8-bit')
    return path, notes


def write_image_atomic(path: Path, img: np.ndarray) -> None:
    """Encode ``img`` (RGB(A) or gray, uint8/uint16) for ``path``'s extension and write it atomically."""
    extension = path.suffix.lower()
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    elif img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    params: List[int] = []
    if extension in ('.jpg', '.jpeg'):
        params = [cv2.IMWRITE_JPEG_QUALITY, _LOSSY_QUALITY]
    elif extension == '.webp':
        params = [cv2.IMWRITE_WEBP_QUALITY, _LOSSY_QUALITY]
    ok, encoded = cv2.imencode(extension, img, params)
    if not ok:
        raise ValueError(f'OpenCV cannot encode a {img.shape} {img.dtype} image as {extension}')
    replace_atomically(path, lambda temporary: temporary.write_bytes(encoded.tobytes()), suffix='.tmp')


def _to_output_pixels(img: np.ndarray, depth: int, extension: str) -> np.ndarray:
    """Float pixels in [0, 1] to 8 or 16 bits, in place in ``img`` (which the caller gives up): one float copy
    of a large output is already gigabytes."""
    peak, dtype = (65535.0, np.uint16) if depth == 16 and extension in _KEEPS_16_BIT else (255.0, np.uint8)
    np.multiply(img, peak, out=img)
    np.rint(img, out=img)
    np.clip(img, 0, peak, out=img)
    return img.astype(dtype)


# --- the work ---------------------------------------------------------------------------------------------

def onnx_cache_dir() -> Path:
    """Where ``--backend auto`` keeps its ONNX exports: $LKSMN_CACHE_DIR, else $XDG_CACHE_HOME/lksmn_arch/onnx
    (default ~/.cache/lksmn_arch/onnx)."""
    if os.environ.get('LKSMN_CACHE_DIR'):
        return Path(os.environ['LKSMN_CACHE_DIR'])
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'lksmn_arch' / 'onnx'


def cached_onnx_export(checkpoint: PathLike, cache_dir: Optional[PathLike] = None,
                       log: Optional[Any] = None) -> Path:
    """The verified ONNX export of ``checkpoint``'s inference form, made once and reused.

    The file name holds a hash of the checkpoint's bytes and the lksmn_arch and torch versions, so a changed
    checkpoint or upgrade makes a new export. The export is checked against PyTorch (``export_checkpoint``)
    before it is kept, and its own sha256 is recorded beside it (``<name>.onnx.sha256``): a cached file that no
    longer matches (damaged, truncated, swapped) is exported again. A failed export or check raises and leaves
    nothing in the cache.
    """
    import hashlib

    import torch

    from lksmn_arch.inference.export import VERIFY_TOLERANCE, export_checkpoint
    from lksmn_arch.weights.shipped import file_sha256
    from lksmn_arch.version import __version__

    checkpoint = Path(checkpoint)
    digest = hashlib.sha256(file_sha256(checkpoint).encode())
    digest.update(f'lksmn_arch {__version__} torch {torch.__version__}'.encode())
    path = Path(cache_dir or onnx_cache_dir()) / f'{checkpoint.stem}-{digest.hexdigest()[:16]}.onnx'
    seal = path.with_name(path.name + '.sha256')  # the export's own hash, written once it was verified
    if path.is_file():
        if seal.is_file() and seal.read_text().strip() == file_sha256(path):
            return path
        if log:
            log(f'note: the cached export {path} does not match its recorded hash (damaged or replaced): '
                'exporting again')
        path.unlink()
    _, _, diff = export_checkpoint(checkpoint, path)  # atomic: a concurrent or killed export leaves no partial file
    if not diff < VERIFY_TOLERANCE:
        path.unlink()
        raise ValueError(f'the ONNX export of {checkpoint} differs from PyTorch by {diff:.2e} (tolerance '
                         f'{VERIFY_TOLERANCE:g}); the file was removed')
    replace_atomically(seal, lambda temp: temp.write_text(file_sha256(path) + '\n'), durable=False)
    return path


def resolve_backend(model_path: PathLike, device: str, precision: str, compile: bool) -> Tuple[str, str]:
    """The backend 'auto' runs, and why. On the CPU, in fp32 or bf16 and without --compile: OpenVINO when it
    is installed (the fastest path measured, in both precisions: see docs/speed.md), else ONNX
    Runtime in fp32; PyTorch otherwise (CUDA, fp16, --compile, bf16 without OpenVINO, neither installed)."""
    from lksmn_arch.archs.complexity import resolve_device
    from lksmn_arch.inference.latency import runtime_installed
    is_onnx = Path(model_path).suffix.lower() == '.onnx'
    if resolve_device(device).type != 'cpu':
        return ('onnxruntime', 'an .onnx model on CUDA') if is_onnx else ('torch', 'a CUDA device')
    if compile:
        return 'torch', '--compile'
    if precision in ('fp32', 'bf16') and runtime_installed('openvino'):
        return 'openvino', f'{precision} on the CPU: OpenVINO is the fastest path'
    if precision == 'fp32' and runtime_installed('onnxruntime'):
        return 'onnxruntime', 'fp32 on the CPU: ONNX Runtime is the fastest path installed (the openvino extra is faster)'
    if is_onnx:
        return 'onnxruntime', 'an .onnx model'
    if precision == 'bf16':
        return 'torch', 'bf16 without OpenVINO (pip install openvino for the faster bf16 path)'
    return 'torch', ('neither OpenVINO nor ONNX Runtime is installed (pip install openvino for the faster '
                     'CPU path)')


def _limit_torch_threads() -> None:
    """PyTorch's CPU pool capped at the CPUs this process may use (its default follows the affinity mask but
    not a container's CPU quota); never raised."""
    import torch
    threads = runtime_threads()
    if threads and torch.get_num_threads() > threads:
        torch.set_num_threads(threads)


def build_upscaler(model_path: Optional[PathLike] = None, *, backend: str = 'auto', tile: Union[int, str] = 'auto',
                   tile_pad: int = 32, max_memory: Optional[int] = None, device: str = 'auto', precision: str = 'fp32', tta: bool = False,
                   progress: bool = True, compile: bool = False, scale: int = 4, exact_tiles: bool = False,
                   log: Optional[Any] = None) -> Upscaler:
    """An Upscaler for an LKSMN checkpoint or an .onnx file; ``backend`` 'auto' picks as ``resolve_backend``.

    Without ``model_path``, the model shipped in the package for ``scale`` runs (``pretrained.default_model``).
    A checkpoint bound for OpenVINO or ONNX Runtime is exported once into ``onnx_cache_dir()`` (verified
    against PyTorch); if that export fails under 'auto', the PyTorch path runs instead, with a line saying
    why. ``log`` receives one line naming the model (when shipped) and one naming the backend in use.
    ``exact_tiles`` (tiles equal to the whole image, PyTorch only) makes 'auto' choose PyTorch.
    """
    if backend not in BACKENDS:
        raise ValueError(f'--backend must be one of {list(BACKENDS)}, got {backend!r}')
    say = log or (lambda line: None)
    if model_path is None:
        from lksmn_arch.weights.shipped import default_model
        shipped = default_model(scale)
        say(f'model: {shipped.describe()}: {shipped.path}')
        model_path = shipped.path
    model_path = Path(model_path)
    options = dict(tile=tile, tile_pad=tile_pad, precision=precision, tta=tta, progress=progress,
                   max_memory=max_memory, exact_tiles=exact_tiles)
    reason = None
    if exact_tiles and backend not in ('auto', 'torch'):
        raise ValueError(f'--exact-tiles runs on PyTorch (it hooks into the network), not --backend {backend}; '
                         'use --backend torch (or auto), or blended tiles')
    if backend == 'auto' and exact_tiles:
        backend, reason = 'torch', '--exact-tiles runs on PyTorch'
    if backend == 'auto':
        backend, reason = resolve_backend(model_path, device, precision, compile)
    if backend == 'torch':
        if model_path.suffix.lower() == '.onnx':
            raise ValueError(f'-m {model_path} is an ONNX model; use --backend onnxruntime for it')
        say(f'backend: PyTorch ({reason or "--backend torch"})')
        _limit_torch_threads()
        return Upscaler.from_checkpoint(str(model_path), device=device, compile=compile, **options)
    if compile:
        raise ValueError(f'--compile is for the torch backend; --backend {backend} compiles the exported model itself')
    if device == 'cuda' and backend == 'openvino':
        raise ValueError('--backend openvino runs on the CPU; use --device cpu or --backend torch')
    onnx_path = model_path
    if model_path.suffix.lower() != '.onnx':
        if not model_path.is_file():
            raise FileNotFoundError(f'checkpoint {model_path} does not exist (or is not a file)')
        try:
            onnx_path = cached_onnx_export(model_path, log=say)
        except OSError as error:  # the cache folder cannot be written (read-only, full, not a folder)
            where = ('LKSMN_CACHE_DIR' if os.environ.get('LKSMN_CACHE_DIR') else 'the cache folder')
            message = f'{where} {onnx_cache_dir()} cannot hold the ONNX export ({error.strerror or error})'
            if reason is None:
                raise OSError(f'{message}; set LKSMN_CACHE_DIR to a writable folder') from None
            say(f'backend: PyTorch ({message}; set LKSMN_CACHE_DIR to a writable folder for the faster path)')
            _limit_torch_threads()
            return Upscaler.from_checkpoint(str(model_path), device=device, compile=compile, **options)
        except (RuntimeError, ValueError, ImportError) as error:
            if reason is None:  # asked for explicitly: an error, not a silent change of backend
                raise
            say(f'backend: PyTorch (the ONNX export failed: {str(error).splitlines()[0][:200]})')
            _limit_torch_threads()
            return Upscaler.from_checkpoint(str(model_path), device=device, compile=compile, **options)
    from lksmn_arch.inference.export import OnnxModel, OpenVinoModel
    if backend == 'openvino':
        model: Any = OpenVinoModel(onnx_path, precision=precision, threads=runtime_threads())
        name = 'OpenVINO'
    else:
        model = OnnxModel(onnx_path, device=device, threads=runtime_threads())
        name = 'ONNX Runtime'
    where = f'; export cached at {onnx_path}' if onnx_path != model_path else ''
    say(f'backend: {name} ({reason or f"--backend {backend}"}{where})')
    return Upscaler(model, **options)


TILE_COST_WARNING = 10.0  # warn when tiles make the network see this many times the image's pixels


def warn_tile_cost(tile: int, tile_pad: int, log: Optional[Any]) -> None:
    """Refuse tiles that are not sane (``check_tiling``: ValueError); say so when their padding makes the
    network see more than 10x the image's pixels."""
    cost = check_tiling(tile, tile_pad)
    if log and cost > TILE_COST_WARNING:
        log(f'warning: --tile {tile} with --tile-pad {tile_pad}: each tile is read with its padding, so the '
            f'network processes about {cost:.0f}x the image\'s pixels; a --tile of 128 or more costs under 2x')


def _header_megapixels(path: Path, max_pixels: int) -> float:
    """An image's size in megapixels from its header alone (``check_header``); 0 when it is refused there (the
    image's own check then says why, when its turn comes)."""
    try:
        width, height = check_header(path, max_pixels)
    except (OSError, ValueError):
        return 0.0
    return width * height / 1e6


def _with_megapixel_bar(files: Sequence[Path], skipped: Set[Path], progress: bool,
                        max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Path]:
    """The files in order, under one bar that advances by each image's megapixels (the work it takes), with
    the image count beside it: a folder of one 12 MP photo and many thumbnails shows its real progress."""
    megapixels = {path: 0.0 if path in skipped else _header_megapixels(path, max_pixels) for path in files}
    total = sum(megapixels.values())
    digits = 1 if total >= 1 else 2  # a folder of small images would show 0.0/0.0 MP with one decimal
    bar = tqdm(total=total, desc='images', unit='MP', disable=not progress,
               bar_format=f'{{desc}}: {{percentage:3.0f}}%|{{bar}}| {{n:.{digits}f}}/{{total:.{digits}f}} MP '
                          '[{elapsed}<{remaining}{postfix}]')
    try:
        for number, path in enumerate(files, 1):
            bar.set_postfix_str(f'image {number}/{len(files)}', refresh=False)
            yield path
            bar.update(megapixels[path])
    finally:
        bar.close()


def upscale_paths(inputs: Union[PathLike, Sequence[PathLike]], output_dir: PathLike,
                  model_path: Optional[PathLike] = None, *, tile: Union[int, str] = 'auto', tile_pad: int = 32,
                  max_memory: Optional[int] = None, device: str = 'auto',
                  precision: str = 'fp32', tta: bool = False, suffix: Optional[str] = None, ext: str = 'auto',
                  backend: str = 'auto', alpha: str = 'network', progress: bool = True, compile: bool = False,
                  scale: Optional[int] = None, overwrite: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                  exact_tiles: bool = False, log: Optional[Any] = None) -> UpscaleReport:
    """Upscale the image files of ``inputs`` (files or folders) into ``output_dir``.

    ``model_path`` None: the shipped model for ``scale`` (default 4); with a model, ``scale`` (if given) must be
    the model's. ``suffix`` defaults to ``_x<scale>``. Outputs that exist are skipped (``report.skipped``) unless
    ``overwrite``; when ``output_dir`` is an input folder, inputs named like this tool's outputs (``*<suffix>``)
    are skipped. Images over ``max_pixels`` or with several frames are refused before decoding. A write that
    fails for a reason every later write shares (read-only folder, disk full) stops the run with an OSError. Per-file problems (unreadable image, output that would overwrite
    an input, two inputs with one output name) are collected in the report's ``failed`` list and reported on
    stderr as they happen; set-up problems (model, missing input, bad option) raise OSError/ValueError.
    """
    if ext not in OUTPUT_EXTENSIONS:
        raise ValueError(f'--ext must be one of {list(OUTPUT_EXTENSIONS)}, got {ext!r}')
    if suffix is not None and (os.sep in suffix or '/' in suffix or '\0' in suffix or suffix in ('.', '..')):
        raise ValueError(f'--suffix {suffix!r} must be part of a file name (no path separators)')
    if max_pixels < 1:
        raise ValueError(f'--max-pixels must be positive, got {max_pixels}')
    if alpha not in ALPHA_MODES:
        raise ValueError(f'--alpha must be one of {list(ALPHA_MODES)}, got {alpha!r}')
    warn_tile_cost(tile, tile_pad, log)
    if scale is not None and (type(scale) is not int or scale not in (2, 3, 4)):
        raise ValueError(f'--scale must be 2, 3 or 4, got {scale!r}')
    files = collect_inputs(inputs)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f'output folder {output_dir} exists and is not a folder')
    upscaler = build_upscaler(model_path, backend=backend, tile=tile, tile_pad=tile_pad, max_memory=max_memory,
                              device=device,
                              precision=precision, tta=tta, progress=progress, compile=compile, scale=scale or 4,
                              exact_tiles=exact_tiles, log=log)
    if scale is not None and upscaler.scale != scale:
        raise ValueError(f'--scale {scale} asked, but the model {model_path or "shipped for it"} is a '
                         f'x{upscaler.scale} model')
    if model_path is not None and log:
        log(f'model: {model_path} (x{upscaler.scale})')
    suffix = f'_x{upscaler.scale}' if suffix is None else suffix
    output_dir.mkdir(parents=True, exist_ok=True)

    # -o an input folder: files named like this tool's outputs there are earlier outputs, not inputs
    own_outputs = {p for p in files if suffix and p.stem.endswith(suffix) and p.parent.resolve() == output_dir.resolve()}
    input_set = {p.resolve() for p in files}  # never written, not even with --overwrite
    report = UpscaleReport()
    claimed: Dict[Path, Path] = {}

    def fail(path: Path, reason: str) -> None:
        report.failed.append((path, reason))
        tqdm.write(f'failed: {path}: {reason}', file=sys.stderr)

    for path in _with_megapixel_bar(files, own_outputs, progress, max_pixels):
        if path in own_outputs:
            report.skipped.append((path, f'its name ends with {suffix!r}: an output of an earlier run into this '
                                         'folder, not upscaled again'))
            continue
        try:
            header_size = check_header(path, max_pixels)
            img, depth = read_image(path)
            if sorted(img.shape[:2]) != sorted(header_size):  # EXIF orientation may swap the sides
                raise ValueError(f'decoded as {img.shape[1]}x{img.shape[0]}, but its header says '
                                 f'{header_size[0]}x{header_size[1]}: not upscaled')
            has_alpha = img.ndim == 3 and img.shape[2] == 4
            target, notes = _final_extension(output_path(path, output_dir, suffix, ext), has_alpha, depth, ext)
            resolved = target.resolve()
            if resolved == path.resolve() or (overwrite and resolved in input_set):
                fail(path, f'its output {target} is an input file; refusing to overwrite it '
                     f'(choose another -o folder or --suffix)')
                continue
            if resolved in claimed:
                fail(path, f'its output {target} is also the output of {claimed[resolved]}')
                continue
            claimed[resolved] = path
            if target.exists() and not overwrite:
                report.skipped.append((path, f'{target} exists (--overwrite replaces it)'))
                continue
            if has_alpha and target.suffix.lower() not in _KEEPS_ALPHA:
                img = img[..., :3]
            scaled = upscaler.upscale_image(img.astype(np.float32) / (65535.0 if depth == 16 else 255.0),
                                            alpha=alpha)
            pixels = _to_output_pixels(scaled, depth, target.suffix.lower())
        except (OSError, ValueError, RuntimeError, MemoryError, cv2.error) as error:
            fail(path, str(error) or type(error).__name__)
            continue
        try:
            write_image_atomic(target, pixels)
        except OSError as error:
            if error.errno in _STOPPING_ERRNOS:  # every later image would fail the same way: stop now
                raise OSError(f'cannot write {target}: {error.strerror}; stopped after {len(report.written)} '
                              f'image(s)') from None
            fail(path, str(error) or type(error).__name__)
            continue
        for note in notes:
            report.notes.append((path, note))
            tqdm.write(f'note: {path}: {note}', file=sys.stderr)
        report.written.append((path, target))
    return report
