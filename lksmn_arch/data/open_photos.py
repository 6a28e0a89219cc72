"""The open-photos data set: real photographs under free licences that Debian packages ship.

DIV2K cannot be downloaded everywhere, but about 155 camera photographs ship inside Debian packages
(GCompris' activity bundles, Enlightenment's wallpapers, Lomiri's wallpapers, Palapeli's puzzles,
libjxl's test image). The manifest ``lksmn_arch/data/open_photos.json`` names each one used: package,
version, path inside the package, member inside a bundle, author, licence, source, split, sha256 of the
stored bytes and the downscale that turns it into an HR image. The validation split holds whole sources
that no training photo comes from (Palapeli's puzzles, GCompris' underwater bundle, one photographer of
Lomiri's wallpapers), so that it measures what photos from elsewhere get.

``lksmn-prepare open-photos --out DIR`` rebuilds the set::

    DIR/debs/                         the .deb files (apt-get download), unless --debs names a folder
    DIR/photos/{train,val,test}/<id>.png  the normalised HR photos
    DIR/openphotos_train_HR_sub(.lmdb), DIR/openphotos_train_LR_bicubic_X{s}_sub(.lmdb)
                                      BasicSR sub-images of the training split (prepare_div2k)
    DIR/openphotos_val/GTmod{s}, LRbicx{s}    the validation split, to choose recipes and checkpoints on
    DIR/openphotos_test/GTmod{s}, LRbicx{s}   the held-out test split, scored once for the model card
    DIR/demo_heldout/GTmod{s}, LRbicx{s}      the demo's three held-out photos (scikit-image), likewise
    DIR/CREDITS.md                    every photo used, with its author and licence

Normalising: lossy WebP photos and camera images over 3000 px on the long side are downscaled by 2
(``INTER_AREA``) so that the network learns neither codec artefacts nor soft sensor detail as
"high resolution"; the others are used as stored.

Containers are read here without Qt or EFL: Qt's binary resource format (``.rcc``) and EET (``.edj``);
``.deb`` files are read as ar archives with Python's ``tarfile``. Every step resumes, and every file
appears under its final name complete or not at all.
"""
import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from lksmn_arch.utils.atomic import replace_atomically
from lksmn_arch.data.sample_photos import TEST_PHOTOS, write_photos
from lksmn_arch.data.prepare import (PrepareError, PrepareFailure, SubImageSettings, prepare_benchmark, prepare_div2k,
                                write_png_atomic)

MANIFEST = Path(__file__).parent / 'open_photos.json'
TRAIN_NAME = 'openphotos_train'
TEST_FOLDER = 'openphotos_test'
VAL_FOLDER = 'openphotos_val'  # the validation split: recipes and checkpoints are chosen on it, never on test
DEMO_FOLDER = 'demo_heldout'  # the demo's three held-out photos (scikit-image), for the model card
# 240x240 HR sub-images every 180 px: the smallest photos (512 px after downscaling) give sub-images,
# and 240 is a multiple of lcm(2, 3, 4) = 12 (LR sub-images of 120, 80 and 60 px).
SUB_IMAGES = SubImageSettings(scales=(2, 3, 4), crop=240, step=180)


@dataclass(frozen=True)
class Photo:
    """One manifest entry: where the photo is stored, who made it, and how it becomes an HR image."""

    id: str
    package: str
    version: str
    path: str
    member: Optional[str]
    author: str
    licence: str
    source: str
    split: str
    downscale: int
    width: int
    height: int
    sha256: str


def load_manifest(path: Path = MANIFEST) -> List[Photo]:
    """The photos of the manifest (shipped as package data)."""
    try:
        entries = json.loads(Path(path).read_text(encoding='utf-8'))['photos']
        return [Photo(**entry) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PrepareError(f'manifest {path} cannot be read: {error}') from None


# ----------------------------------------------------------------------------------------------------
# Containers


def read_rcc(data: bytes, source: str = 'bundle') -> Dict[str, bytes]:
    """Files of a Qt binary resource bundle (``.rcc``), by path (``/a/b.webp``), decompressed."""
    try:
        if data[:4] != b'qres':
            raise ValueError('no qres magic')
        version, tree, payload, names = struct.unpack('>IIII', data[4:20])
        entry_size = 14 if version < 2 else 22

        def name_at(offset: int) -> str:
            (length,) = struct.unpack('>H', data[names + offset:names + offset + 2])
            return data[names + offset + 6:names + offset + 6 + 2 * length].decode('utf-16-be')

        files: Dict[str, bytes] = {}
        stack = [(0, '')]
        while stack:
            index, prefix = stack.pop()
            at = tree + index * entry_size
            name_offset, flags = struct.unpack('>IH', data[at:at + 6])
            path = f'{prefix}/{name_at(name_offset)}' if index else ''
            if flags & 0x02:
                count, first = struct.unpack('>II', data[at + 6:at + 14])
                stack.extend((child, path) for child in range(first, first + count))
                continue
            (offset,) = struct.unpack('>I', data[at + 10:at + 14])
            (size,) = struct.unpack('>I', data[payload + offset:payload + offset + 4])
            body = data[payload + offset + 4:payload + offset + 4 + size]
            if len(body) != size:
                raise ValueError(f'{path} is cut short')
            if flags & 0x04:
                raise ValueError(f'{path} is zstd-compressed, which this reader does not support')
            files[path] = zlib.decompress(body[4:]) if flags & 0x01 else body
        return files
    except (ValueError, struct.error, zlib.error, UnicodeDecodeError, IndexError) as error:
        raise PrepareError(f'{source}: not a readable Qt resource bundle ({error})') from None


def read_eet(data: bytes, source: str = 'file') -> Dict[str, bytes]:
    """Plain and zlib-compressed entries of an EET file (Enlightenment's ``.edj``), by entry name.

    Entries in other compressions (LZ4) and ciphered ones are left out: the photos are plain JPEG.
    """
    try:
        magic, count, _ = struct.unpack('>III', data[:12])
        if magic != 0x1EE70F42:
            raise ValueError(f'magic {magic:#x}, expected 0x1ee70f42')
        entries: Dict[str, bytes] = {}
        for index in range(count):
            offset, size, data_size, name_offset, name_size, flags = struct.unpack(
                '>6I', data[12 + 24 * index:36 + 24 * index])
            name = data[name_offset:name_offset + name_size].rstrip(b'\0').decode('utf-8')
            body = data[offset:offset + size]
            if len(body) != size:
                raise ValueError(f'{name} is cut short')
            if flags & 0x02:
                continue  # ciphered: never holds the photos
            if flags & 0x01:
                try:
                    body = zlib.decompress(body)
                except zlib.error:
                    continue  # LZ4-compressed (edje's scripts and fonts), never the photos: left out
                if len(body) != data_size:
                    raise ValueError(f'{name} decompresses to the wrong size')
            entries[name] = body
        return entries
    except (ValueError, struct.error, UnicodeDecodeError) as error:
        raise PrepareError(f'{source}: not a readable EET file ({error})') from None


def _ar_members(path: Path) -> Dict[str, tuple]:
    """``name -> (offset, size)`` of the members of an ar archive (a ``.deb``)."""
    members = {}
    with open(path, 'rb') as handle:
        if handle.read(8) != b'!<arch>\n':
            raise PrepareError(f'{path}: not a .deb file (no ar archive header)')
        while True:
            header = handle.read(60)
            if len(header) < 60:
                return members
            name = header[:16].decode('ascii', 'replace').strip().rstrip('/')
            try:
                size = int(header[48:58].decode('ascii').strip())
            except ValueError:
                raise PrepareError(f'{path}: damaged .deb file (bad member header)') from None
            members[name] = (handle.tell(), size)
            handle.seek(size + (size % 2), os.SEEK_CUR)


@contextlib.contextmanager
def _deb_tar(path: Path, kind: str) -> Iterator[tarfile.TarFile]:
    """The ``control.tar.*`` or ``data.tar.*`` of a ``.deb``, opened as a stream (and the file closed after)."""
    members = _ar_members(path)
    name = next((m for m in members if m.startswith(f'{kind}.tar')), None)
    if name is None:
        raise PrepareError(f'{path}: damaged .deb file (no {kind}.tar member)')
    if name.endswith('.zst'):
        raise PrepareError(f'{path}: {name} is zstd-compressed; extract it with dpkg-deb and use --debs on a '
                           'folder of re-packed files, or install python zstd support')
    offset, size = members[name]
    with open(path, 'rb') as handle:
        handle.seek(offset)
        try:
            archive = tarfile.open(fileobj=_Bounded(handle, size), mode='r|*')
        except tarfile.TarError as error:
            raise PrepareError(f'{path}: damaged .deb file ({name}: {error})') from None
        with archive:
            yield archive


class _Bounded:
    """A read-only view of ``size`` bytes of an open file, for a streamed tar member."""

    def __init__(self, handle, size: int):
        self.handle, self.left = handle, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        chunk = self.handle.read(n)
        self.left -= len(chunk)
        return chunk


def deb_version(path: Path) -> str:
    """The ``Version`` field of a ``.deb``'s control file."""
    with _deb_tar(path, 'control') as archive:
        for member in archive:
            if member.name.lstrip('./') == 'control':
                for line in archive.extractfile(member).read().decode('utf-8', 'replace').splitlines():
                    if line.startswith('Version:'):
                        return line.split(':', 1)[1].strip()
    raise PrepareError(f'{path}: damaged .deb file (no Version in its control file)')


def read_deb_files(path: Path, wanted: Iterable[str]) -> Dict[str, bytes]:
    """The files ``wanted`` (paths inside the package, ``usr/...``) of a ``.deb``, in one pass.

    Raises PrepareError naming the first file the package does not hold.
    """
    wanted = set(wanted)
    found: Dict[str, bytes] = {}
    try:
        with _deb_tar(path, 'data') as archive:
            for member in archive:
                name = member.name[2:] if member.name.startswith('./') else member.name
                if name in wanted and member.isfile():
                    found[name] = archive.extractfile(member).read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise PrepareError(f'{path}: damaged .deb file ({type(error).__name__}: {error})') from None
    missing = sorted(wanted - set(found))
    if missing:
        raise PrepareError(f'{path}: the package holds no {missing[0]}' +
                           (f' (and {len(missing) - 1} more named in the manifest)' if len(missing) > 1 else ''))
    return found


# ----------------------------------------------------------------------------------------------------
# Packages


def deb_file_name(package: str, version: str) -> str:
    """The file name ``apt-get download`` gives (the epoch's colon written ``%3a``)."""
    return f'{package}_{version.replace(":", "%3a")}_all.deb'


def find_deb(folder: Path, package: str, version: str) -> Optional[Path]:
    """The ``.deb`` of ``package`` at ``version`` in ``folder``; PrepareError if only other versions are there."""
    exact = folder / deb_file_name(package, version)
    if exact.is_file():
        return exact
    others = sorted(folder.glob(f'{package}_*.deb'))
    for other in others:
        if deb_version(other) == version:
            return other
    if others:
        raise PrepareError(f'{folder} holds {others[0].name} but the manifest needs {package} version {version}')
    return None


def download_debs(packages: Dict[str, str], folder: Path) -> None:
    """``apt-get download package=version`` for each package not yet in ``folder``.

    Downloads into a temporary folder beside ``folder`` and moves each complete file in, so an
    interrupted download leaves nothing under a final name.
    """
    missing = {p: v for p, v in packages.items() if find_deb(folder, p, v) is None}
    if not missing:
        return
    apt = shutil.which('apt-get')
    if apt is None:
        raise PrepareFailure('apt-get not found: on a machine without apt, download these Debian bookworm packages '
                           'elsewhere and pass their folder with --debs: '
                           + ', '.join(f'{p}={v}' for p, v in sorted(missing.items())))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='.download-', dir=folder) as temp:
        for package, version in sorted(missing.items()):
            print(f'  apt-get download {package}={version}', flush=True)
            done = subprocess.run([apt, 'download', f'{package}={version}'], cwd=temp, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            if done.returncode != 0:
                last = (done.stdout.strip().splitlines() or ['no output'])[-1]
                raise PrepareFailure(f'apt-get download {package}={version} failed: {last} (run apt-get update '
                                   'first, or pass a folder of downloaded .deb files with --debs)')
            for made in Path(temp).glob(f'{package}_*.deb'):
                os.replace(made, folder / made.name)


# ----------------------------------------------------------------------------------------------------
# Photos


def normalise(stored: bytes, photo: Photo) -> np.ndarray:
    """Decode a stored photo (BGR uint8) and downscale it by ``photo.downscale`` with INTER_AREA."""
    image = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise PrepareError(f'{photo.id} ({photo.package}: {photo.path} {photo.member or ""}): '
                           'OpenCV cannot decode it')
    if photo.downscale > 1:
        h, w = image.shape[:2]
        image = cv2.resize(image, (w // photo.downscale, h // photo.downscale), interpolation=cv2.INTER_AREA)
    return image


def stored_bytes(photo: Photo, files: Dict[str, bytes], containers: Dict[str, Dict[str, bytes]]) -> bytes:
    """The bytes of one photo, from a file of its package or a member of a bundle in it; sha256 checked."""
    where = f'{photo.package} {photo.version}: {photo.path}'
    if photo.member is None:
        data = files[photo.path]
    else:
        if photo.path not in containers:
            reader = read_rcc if photo.path.endswith('.rcc') else read_eet
            containers[photo.path] = reader(files[photo.path], where)
        if photo.member not in containers[photo.path]:
            raise PrepareError(f'{where} holds no {photo.member} (photo {photo.id})')
        data = containers[photo.path][photo.member]
        where += f' {photo.member}'
    digest = hashlib.sha256(data).hexdigest()
    if digest != photo.sha256:
        raise PrepareError(f'{where}: sha256 {digest[:16]}... is not the manifest\'s {photo.sha256[:16]}... '
                           f'(photo {photo.id}); the package differs from the one the manifest was made from')
    return data


def photo_path(out: Path, photo: Photo) -> Path:
    """``OUT/photos/<split>/<id>.png``."""
    return out / 'photos' / photo.split / f'{photo.id}.png'


def extract_photos(photos: Sequence[Photo], debs: Path, out: Path) -> None:
    """Write every photo's normalised HR PNG (those already written are kept), package by package."""
    by_package: Dict[tuple, List[Photo]] = {}
    for photo in photos:
        by_package.setdefault((photo.package, photo.version), []).append(photo)
    with tqdm(total=len(photos), desc='photos', unit='photo', dynamic_ncols=True) as bar:
        for (package, version), members in sorted(by_package.items()):
            todo = [p for p in members if not photo_path(out, p).is_file()]
            bar.update(len(members) - len(todo))
            if not todo:
                continue
            deb = find_deb(debs, package, version)
            if deb is None:
                raise PrepareError(f'{debs} holds no {deb_file_name(package, version)} ({package} version {version})')
            bar.set_postfix_str(package)
            files = read_deb_files(deb, {p.path for p in todo})
            containers: Dict[str, Dict[str, bytes]] = {}
            for photo in todo:
                image = normalise(stored_bytes(photo, files, containers), photo)
                target = photo_path(out, photo)
                target.parent.mkdir(parents=True, exist_ok=True)
                write_png_atomic(image, target)
                bar.update()


CREDITS_TITLE = '# Credits: the open-photos data set'


def check_credits_target(credits: Path) -> None:
    """PrepareError unless ``credits`` is absent or a CREDITS.md this command wrote (its title line): a file
    of the user's under that name is never replaced."""
    if credits.is_symlink() or (credits.exists() and not credits.is_file()):
        raise PrepareError(f'{credits} exists and is not a plain file: move it away or choose another --out')
    if credits.exists():
        with open(credits, 'rb') as handle:
            first = handle.readline(len(CREDITS_TITLE) + 2).decode('utf-8', 'replace').strip()
        if first != CREDITS_TITLE:
            raise PrepareError(f'{credits} exists and was not written by lksmn-prepare open-photos: move it away '
                               'or choose another --out (it is left as it is)')


def credits_text(photos: Sequence[Photo]) -> str:
    """CREDITS.md: every photo with its author, licence, source and package."""
    lines = [CREDITS_TITLE, '',
             'Every photograph below was taken from the Debian package named, at the version named, and '
             'normalised by lksmn-prepare open-photos (downscale 2 = halved with INTER_AREA). Licences as '
             'stated by the package (its copyright file, README or metadata).', '',
             '| id | split | author | licence | source | package (version): path [member] | downscale |',
             '|---|---|---|---|---|---|---:|']
    for p in photos:
        member = f' [{p.member}]' if p.member else ''
        lines.append(f'| {p.id} | {p.split} | {p.author} | {p.licence} | {p.source} | '
                     f'{p.package} ({p.version}): {p.path}{member} | {p.downscale} |')
    counts: Dict[str, int] = {}
    for p in photos:
        counts[p.licence] = counts.get(p.licence, 0) + 1
    lines += ['', 'Licences: ' + ', '.join(f'{k} {v}' for k, v in sorted(counts.items(), key=lambda kv: -kv[1])), '']
    return '\n'.join(lines)


def prepare_open_photos(out: Path, debs: Optional[Path] = None, workers: int = 2, lmdb: bool = True,
                        manifest: Path = MANIFEST, settings: SubImageSettings = SUB_IMAGES) -> Dict[str, Path]:
    """Build the open-photos set in ``out`` (see the module docstring); resumes over earlier output.

    ``debs``: a folder of downloaded ``.deb`` files to read (never written to); default ``out/debs``,
    filled with ``apt-get download``. Returns the paths of the outputs.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrepareError(f'--out {out} exists and is not a folder')
    photos = load_manifest(manifest)
    credits = out / 'CREDITS.md'
    check_credits_target(credits)
    packages = {p.package: p.version for p in photos}
    counts = ', '.join(f'{sum(p.split == split for p in photos)} {split}' for split in ('train', 'val', 'test'))
    print(f'lksmn-prepare open-photos: {len(photos)} photos ({counts}) from {len(packages)} Debian packages '
          f'-> {out}/', flush=True)
    if debs is None:
        debs = out / 'debs'
        print(f'[1/5] packages -> {debs}/ (apt-get download; present ones are kept)', flush=True)
        download_debs(packages, debs)
    else:
        debs = Path(debs)
        if not debs.is_dir():
            raise PrepareError(f'--debs {debs} is not a folder')
        print(f'[1/5] packages: reading the .deb files in {debs}/', flush=True)
    out.mkdir(parents=True, exist_ok=True)
    print('[2/5] photos -> photos/train/, photos/val/, photos/test/ (normalised HR PNG; finished ones are kept)',
          flush=True)
    extract_photos(photos, debs, out)
    print('[3/5] training split: BasicSR sub-images', flush=True)
    train = prepare_div2k([out / 'photos' / 'train'], out, TRAIN_NAME, settings, workers=workers, lmdb=lmdb)
    print('[4/5] validation and held-out splits: GTmod{s}/ and LRbicx{s}/', flush=True)
    if any(p.split == 'val' for p in photos):
        prepare_benchmark(out / 'photos' / 'val', out / VAL_FOLDER, settings.scales, workers=workers)
    prepare_benchmark(out / 'photos' / 'test', out / TEST_FOLDER, settings.scales, workers=workers)
    print("[5/5] the demo's held-out photos (scikit-image's astronaut, coffee, chelsea) -> demo_heldout/", flush=True)
    write_photos(out / 'photos' / 'demo_heldout', TEST_PHOTOS)
    prepare_benchmark(out / 'photos' / 'demo_heldout', out / DEMO_FOLDER, settings.scales, workers=1)
    text = credits_text(photos)
    replace_atomically(credits, lambda temp: temp.write_text(text, encoding='utf-8'), durable=False)
    print(f'credits: {credits}', flush=True)
    return {'train_hr': train.folders[0], 'val': out / VAL_FOLDER, 'test': out / TEST_FOLDER, 'demo_heldout': out / DEMO_FOLDER,
            'credits': credits, 'debs': debs}
