"""lksmn-prepare open-photos: its container readers and the whole build, on small synthetic packages.

The tests make their own Qt resource bundles, EET files and .deb archives (no download): the readers
must find every file the real packages hold in the same layouts, and the build must name what is wrong.
"""
import hashlib
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from lksmn_arch.data import open_photos
from lksmn_arch.data.open_photos import (Photo, deb_version, load_manifest, prepare_open_photos, read_deb_files, read_eet,
                                    read_rcc)
from lksmn_arch.cli.prepare import main as prepare_main
from lksmn_arch.data.prepare import PrepareError, SubImageSettings

SMALL_GRID = SubImageSettings(scales=(2, 3, 4), crop=24, step=12)


def make_rcc(files, version=3, compress=()):
    """A Qt binary resource bundle holding ``files`` ({'/a/b.webp': bytes}); paths in ``compress`` are zlib'd."""
    tree = {}
    for path in files:
        node = tree
        for part in path.strip('/').split('/')[:-1]:
            node = node.setdefault(part, {})
        node[path.strip('/').split('/')[-1]] = path
    names, payload, entries = bytearray(), bytearray(), []

    def name_offset(name):
        offset = len(names)
        encoded = name.encode('utf-16-be')
        names.extend(struct.pack('>HI', len(name), 0) + encoded)
        return offset

    # breadth-first, as rcc lays out the tree: a directory's children are consecutive entries
    entries.append(['dir', 0, tree])
    index = 0
    while index < len(entries):
        kind, _, node = entries[index]
        if kind == 'dir':
            first = len(entries)
            for child, value in sorted(node.items()):
                entries.append(['dir' if isinstance(value, dict) else 'file', name_offset(child), value])
            entries[index].append((len(node), first))
        index += 1
    blob = bytearray()
    entry_size = 14 if version < 2 else 22
    for kind, offset, node, *rest in entries:
        if kind == 'dir':
            count, first = rest[0]
            blob += struct.pack('>IHII', offset, 0x02, count, first)
        else:
            data = files[node]
            flags = 0x01 if node in compress else 0
            body = struct.pack('>I', len(data)) + zlib.compress(data) if flags else data
            blob += struct.pack('>IHHHI', offset, flags, 0, 0, len(payload))
            payload += struct.pack('>I', len(body)) + body
        if version >= 2:
            blob += b'\0' * 8
        assert len(blob) % entry_size == 0
    header = 24 if version >= 3 else 20
    tree_at, data_at = header, header + len(blob)
    names_at = data_at + len(payload)
    head = b'qres' + struct.pack('>IIII', version, tree_at, data_at, names_at) + (b'\0' * 4 if version >= 3 else b'')
    return bytes(head + blob + payload + names)


def make_eet(entries, compress=()):
    """An EET file with ``entries`` ({name: bytes}); names in ``compress`` are zlib'd."""
    count = len(entries)
    header = struct.pack('>III', 0x1EE70F42, count, 0)
    table_end = 12 + 24 * count
    names = b''.join(name.encode() + b'\0' for name in entries)
    offset = table_end + len(names)
    table, bodies, name_at = b'', b'', table_end
    for name, data in entries.items():
        body = zlib.compress(data) if name in compress else data
        table += struct.pack('>6I', offset + len(bodies), len(body), len(data), name_at, len(name) + 1,
                             0x01 if name in compress else 0)
        bodies += body
        name_at += len(name) + 1
    return header + table + names + bodies


def _tar_xz(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:xz') as archive:
        for name, data in files.items():
            info = tarfile.TarInfo('./' + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_deb(path, package, version, files):
    """A .deb (ar archive: debian-binary, control.tar.xz, data.tar.xz) holding ``files`` ({'usr/..': bytes})."""
    control = f'Package: {package}\nVersion: {version}\nArchitecture: all\n'.encode()
    members = [('debian-binary', b'2.0\n'), ('control.tar.xz', _tar_xz({'control': control})),
               ('data.tar.xz', _tar_xz(files))]
    out = bytearray(b'!<arch>\n')
    for name, data in members:
        out += f'{name + "/":<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n'.encode()
        out += data + (b'\n' if len(data) % 2 else b'')
    Path(path).write_bytes(bytes(out))
    return Path(path)


def _photo_bytes(seed, ext='.png', size=(96, 72)):
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), (5, 5), 2)
    ok, encoded = cv2.imencode(ext, image)
    assert ok
    return encoded.tobytes()


@pytest.fixture
def packages(tmp_path):
    """Three synthetic packages (a Qt bundle, an EET file, a plain JPEG) and a manifest of five photos."""
    bundle = make_rcc({'/act/resource/a.webp': _photo_bytes(1, '.webp', (192, 144)),
                       '/act/resource/sub/b.webp': _photo_bytes(2, '.webp', (192, 144)),
                       '/act/resource/README': b'Copyright: someone'}, compress={'/act/resource/sub/b.webp'})
    eet = make_eet({'edje/images/0': _photo_bytes(3, '.jpg', (96, 72)), 'edje/images/1': b'small',
                    'edje/scripts': b'\x04\x22\x4d\x18 not zlib'}, compress={'edje/images/1'})
    debs = tmp_path / 'debs'
    debs.mkdir()
    make_deb(debs / 'kids-data_1.0-1_all.deb', 'kids-data', '1.0-1', {'usr/share/kids/act.rcc': bundle})
    make_deb(debs / 'wall-data_2%3a0.5-2_all.deb', 'wall-data', '2:0.5-2', {'usr/share/wall/Peaks.edj': eet})
    plain = _photo_bytes(4, '.jpg', (96, 72))
    lossless = _photo_bytes(5, '.png', (96, 72))
    make_deb(debs / 'pics_3_all.deb', 'pics', '3', {'usr/share/pics/one.jpg': plain, 'usr/share/pics/two.png': lossless})

    def entry(id, package, version, path, member, data, split, downscale):
        return dict(id=id, package=package, version=version, path=path, member=member, author=f'author of {id}',
                    licence='CC0-1.0', source='https://example.org', split=split, downscale=downscale, width=0,
                    height=0, sha256=hashlib.sha256(data).hexdigest())

    photos = [
        entry('kids_a', 'kids-data', '1.0-1', 'usr/share/kids/act.rcc', '/act/resource/a.webp',
              _photo_bytes(1, '.webp', (192, 144)), 'train', 2),
        entry('kids_b', 'kids-data', '1.0-1', 'usr/share/kids/act.rcc', '/act/resource/sub/b.webp',
              _photo_bytes(2, '.webp', (192, 144)), 'test', 2),
        entry('wall_peaks', 'wall-data', '2:0.5-2', 'usr/share/wall/Peaks.edj', 'edje/images/0',
              _photo_bytes(3, '.jpg', (96, 72)), 'train', 1),
        entry('pics_one', 'pics', '3', 'usr/share/pics/one.jpg', None, plain, 'train', 1),
        entry('pics_two', 'pics', '3', 'usr/share/pics/two.png', None, lossless, 'test', 1),
    ]
    manifest = tmp_path / 'manifest.json'
    manifest.write_text(json.dumps({'photos': photos}))
    return {'debs': debs, 'manifest': manifest, 'photos': photos}


def test_qt_resource_bundle_files_are_found_in_every_format_version():
    files = {'/x/a.webp': b'one', '/x/y/b.webp': b'two' * 50, '/top.txt': b'three'}
    for version in (1, 2, 3):
        bundle = make_rcc(files, version=version, compress={'/x/y/b.webp'})
        assert read_rcc(bundle) == files


def test_damaged_qt_bundle_is_named():
    bundle = make_rcc({'/a.webp': b'one' * 100})
    with pytest.raises(PrepareError, match='act.rcc: not a readable Qt resource bundle'):
        read_rcc(bundle[:40], 'act.rcc')
    with pytest.raises(PrepareError, match='not a readable Qt resource bundle'):
        read_rcc(b'PK\x03\x04' + bundle[4:], 'act.rcc')


def test_eet_entries_plain_and_zlib_are_read_and_other_compressions_left_out():
    entries = read_eet(make_eet({'edje/images/0': b'jpeg', 'edje/images/1': b'more' * 9, 'lz4': b'\x04"M\x18xx'},
                                compress={'edje/images/1', 'lz4'}))
    assert entries['edje/images/0'] == b'jpeg' and entries['edje/images/1'] == b'more' * 9
    eet = bytearray(make_eet({'lz4': b'payload'}))
    struct.pack_into('>I', eet, 12 + 20, 0x01)  # claims zlib, holds raw bytes (as edje's LZ4 entries do)
    assert 'lz4' not in read_eet(bytes(eet))
    with pytest.raises(PrepareError, match='Peaks.edj: not a readable EET file'):
        read_eet(b'\x00' * 12, 'Peaks.edj')


def test_deb_files_and_version_are_read_without_dpkg(tmp_path):
    deb = make_deb(tmp_path / 'p_1_all.deb', 'p', '4:1.2-3', {'usr/a': b'A', 'usr/b/c': b'C'})
    assert deb_version(deb) == '4:1.2-3'
    assert read_deb_files(deb, {'usr/b/c'}) == {'usr/b/c': b'C'}
    with pytest.raises(PrepareError, match='the package holds no usr/missing'):
        read_deb_files(deb, {'usr/a', 'usr/missing'})
    (tmp_path / 'bad.deb').write_bytes(b'not an archive')
    with pytest.raises(PrepareError, match='bad.deb: not a .deb file'):
        read_deb_files(tmp_path / 'bad.deb', {'usr/a'})


def test_open_photos_build_writes_train_and_test_splits_lmdbs_and_credits(packages, tmp_path, capsys):
    out = tmp_path / 'out'
    paths = prepare_open_photos(out, debs=packages['debs'], workers=1, manifest=packages['manifest'],
                                settings=SMALL_GRID)
    train = sorted(p.name for p in (out / 'photos' / 'train').iterdir())
    assert train == ['kids_a.png', 'pics_one.png', 'wall_peaks.png']
    assert cv2.imread(str(out / 'photos' / 'train' / 'kids_a.png')).shape == (72, 96, 3)  # WebP halved
    assert cv2.imread(str(out / 'photos' / 'test' / 'pics_two.png')).shape == (72, 96, 3)  # kept as stored
    for scale in (2, 3, 4):
        assert (out / f'openphotos_train_LR_bicubic_X{scale}_sub.lmdb' / 'meta_info.txt').is_file()
        gt = sorted(p.name for p in (out / 'openphotos_test' / f'GTmod{scale}').iterdir() if p.suffix == '.png')
        assert gt == ['kids_b.png', 'pics_two.png']
        assert (out / 'demo_heldout' / f'LRbicx{scale}' / 'astronaut.png').is_file()
    credits = paths['credits'].read_text()
    for photo in packages['photos']:
        assert f'| {photo["id"]} | {photo["split"]} | author of {photo["id"]} | CC0-1.0 |' in credits
    assert 'wall-data (2:0.5-2): usr/share/wall/Peaks.edj [edje/images/0]' in credits


def test_open_photos_rerun_resumes_without_rewriting(packages, tmp_path):
    out = tmp_path / 'out'
    prepare_open_photos(out, debs=packages['debs'], workers=1, manifest=packages['manifest'], settings=SMALL_GRID)
    photo = out / 'photos' / 'train' / 'kids_a.png'
    before = photo.stat().st_mtime_ns
    for deb in packages['debs'].iterdir():  # finished photos need no package any more
        deb.unlink()
    prepare_open_photos(out, debs=packages['debs'], workers=1, manifest=packages['manifest'], settings=SMALL_GRID)
    assert photo.stat().st_mtime_ns == before


def _manifest_with(packages, tmp_path, **change):
    photos = [dict(p) for p in packages['photos']]
    photos[0].update(change)
    path = tmp_path / 'changed.json'
    path.write_text(json.dumps({'photos': photos}))
    return path


@pytest.mark.parametrize('change, message', [
    ({'member': '/act/resource/gone.webp'}, r'usr/share/kids/act.rcc holds no /act/resource/gone.webp \(photo kids_a\)'),
    ({'sha256': '0' * 64}, r'sha256 .* is not the manifest\'s 0000000000000000\.\.\. \(photo kids_a\)'),
    ({'version': '9.9-9'}, r'holds kids-data_1.0-1_all.deb but the manifest needs kids-data version 9.9-9'),
    ({'path': 'usr/share/kids/other.rcc'}, r'kids-data_1.0-1_all.deb: the package holds no usr/share/kids/other.rcc'),
    ({'package': 'absent-data'}, r'holds no absent-data_1.0-1_all.deb \(absent-data version 1.0-1\)'),
])
def test_open_photos_problem_is_named_and_no_photo_is_half_written(packages, tmp_path, change, message):
    out = tmp_path / 'out'
    with pytest.raises(PrepareError, match=message):
        prepare_open_photos(out, debs=packages['debs'], workers=1, manifest=_manifest_with(packages, tmp_path, **change),
                            settings=SMALL_GRID)
    leftovers = [p for p in out.rglob('*') if p.is_file() and p.name.startswith('.')]
    assert leftovers == []


def test_without_apt_get_the_error_names_the_packages_and_debs(packages, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(open_photos.shutil, 'which', lambda name: None)
    status = prepare_main(['open-photos', '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert status == 1
    assert 'apt-get not found' in err and '--debs' in err and 'gcompris-qt-data=3.1-2' in err
    assert err.count('\n') == 1  # one line, no traceback


def test_failed_apt_get_download_is_one_line_naming_the_package(packages, tmp_path, monkeypatch, capsys):
    fake = tmp_path / 'apt-get'
    fake.write_text('#!/bin/sh\necho "E: Can\'t find a source to download version \'3.1-2\' of \'gcompris-qt-data\'"\n'
                    'exit 100\n')
    fake.chmod(0o755)
    monkeypatch.setattr(open_photos.shutil, 'which', lambda name: str(fake))
    status = prepare_main(['open-photos', '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert status == 1 and err.count('\n') == 1
    assert 'apt-get download' in err and "Can't find a source" in err
    assert not list((tmp_path / 'out' / 'debs').glob('*.deb'))


def test_validation_split_holds_whole_sources_that_no_training_photo_comes_from():
    photos = load_manifest()
    val = [p for p in photos if p.split == 'val']
    assert len(val) >= 10

    def source(p):  # a package, a GCompris bundle, or a photographer of a wallpaper package
        if p.package == 'gcompris-qt-data':
            return p.path
        if p.package.startswith('lomiri'):
            return p.id.rsplit('_by_', 1)[-1]
        return p.package

    training_sources = {source(p) for p in photos if p.split == 'train'}
    outside = [p for p in val if source(p) not in training_sources]
    assert len(outside) >= 0.75 * len(val)
    assert len({source(p) for p in outside}) >= 3


def test_shipped_manifest_names_every_photo_with_licence_and_a_split_of_about_twenty():
    photos = load_manifest()
    assert len(photos) >= 140
    assert len({p.id for p in photos}) == len(photos)
    test = [p for p in photos if p.split == 'test']
    assert 18 <= len(test) <= 22
    assert {p.package for p in test} == {p.package for p in photos}  # every source is held out too
    assert any(p.width >= 3840 for p in test) and any(p.path.endswith('.png') for p in test)  # 4K and lossless
    for p in photos:
        assert isinstance(p, Photo) and p.author and p.licence and p.split in ('train', 'val', 'test')
        assert len(p.sha256) == 64 and p.downscale in (1, 2)
