"""Nothing a user had is lost: inputs inside outputs, planted links, files of the user's under our names,
and failures every image would meet (a full disk) stop at once with one line."""
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import pytest

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
from lksmn_arch.cli import prepare as prepare_cli
from lksmn_arch.data import open_photos, prepare
from lksmn_arch.utils import atomic


def _photo(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _folder(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f'{i:04d}.png'), _photo(i))
    return folder


def _digests(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def _one_line(err: str) -> bool:
    """One message line on stderr (the progress bar's carriage-return frames aside) and no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and 'img/s]' not in line]
    return len(lines) == 1 and 'Traceback' not in err


def test_benchmark_input_inside_its_output_is_refused_before_overwrite_deletes_it(tmp_path, capsys):
    bench = tmp_path / 'bench' / 'Set5'
    gt = _folder(bench / 'GTmod4')
    before = _digests(bench)
    status = prepare_cli.main(['benchmark', '--hr', str(gt), '--out', str(bench), '--scales', '4', '--overwrite'])
    err = capsys.readouterr().err
    assert status == 2 and _one_line(err) and str(gt) in err and 'inside the output folder' in err
    assert _digests(bench) == before


def test_div2k_input_that_is_an_output_folder_is_refused_before_overwrite_deletes_it(tmp_path, capsys):
    data = tmp_path / 'X' / 'data'
    hr = _folder(data / 'X_HR_sub')
    before = _digests(data)
    status = prepare_cli.main(['div2k', '--hr', str(hr), '--out', str(data), '--name', 'X', '--crop', '48',
                               '--step', '24', '--overwrite'])
    err = capsys.readouterr().err
    assert status == 2 and _one_line(err) and 'inside the output folder' in err
    assert _digests(data) == before


def test_overwrite_refuses_an_output_folder_that_is_a_symbolic_link_and_deletes_nothing(tmp_path, capsys):
    hr = _folder(tmp_path / 'hr')
    elsewhere = _folder(tmp_path / 'elsewhere', 1)
    out = tmp_path / 'out'
    assert prepare_cli.main(['benchmark', '--hr', str(hr), '--out', str(out), '--scales', '2', '4']) == 0
    kept = _digests(out / 'GTmod2')
    (out / 'LRbicx4').rename(tmp_path / 'old_LRbicx4')
    (out / 'LRbicx4').symlink_to(elsewhere)
    capsys.readouterr()
    status = prepare_cli.main(['benchmark', '--hr', str(hr), '--out', str(out), '--scales', '2', '4', '--overwrite'])
    err = capsys.readouterr().err
    assert status == 2 and _one_line(err) and 'symbolic link' in err
    assert _digests(out / 'GTmod2') == kept and len(_digests(elsewhere)) == 1


def test_a_full_disk_stops_prepare_at_the_first_image_with_one_line(tmp_path, capsys, monkeypatch):
    hr = _folder(tmp_path / 'hr', 5)
    calls = []

    def full_disk(img, path, compression=prepare.PNG_COMPRESSION):
        calls.append(path)
        raise OSError(errno.ENOSPC, 'No space left on device', str(path))

    monkeypatch.setattr(prepare, 'write_png_atomic', full_disk)
    status = prepare_cli.main(['benchmark', '--hr', str(hr), '--out', str(tmp_path / 'out'), '--scales', '4',
                               '--workers', '1'])
    err = capsys.readouterr().err
    assert status == 1 and len(calls) == 1
    assert _one_line(err) and 'No space left on device' in err and 'resume' in err


def test_open_photos_keeps_a_credits_file_of_the_users_and_stops_before_any_download(tmp_path, capsys, monkeypatch):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'CREDITS.md').write_text('my own notes\n')
    monkeypatch.setattr(open_photos, 'download_debs', lambda *a, **k: pytest.fail('downloaded before refusing'))
    status = prepare_cli.main(['open-photos', '--out', str(out)])
    err = capsys.readouterr().err
    assert status == 2 and _one_line(err) and 'CREDITS.md' in err
    assert (out / 'CREDITS.md').read_text() == 'my own notes\n'


def test_our_own_credits_file_may_be_rewritten(tmp_path):
    credits = tmp_path / 'CREDITS.md'
    credits.write_text(open_photos.CREDITS_TITLE + '\n\nolder run\n')
    open_photos.check_credits_target(credits)  # no error


def test_temporaries_are_created_exclusively_never_through_a_planted_link(tmp_path, monkeypatch):
    victim = tmp_path / 'victim.txt'
    victim.write_text('precious')
    out = tmp_path / 'out'
    out.mkdir()
    target = out / 'result.png'
    # the first name the generator offers is taken by a link an attacker planted; the write must go elsewhere
    names = iter(['planted', 'fresh'])
    monkeypatch.setattr(tempfile, '_get_candidate_names', lambda: names)
    planted = out / f'.result.png.planted.tmp-{os.getpid()}'
    planted.symlink_to(victim)
    atomic.replace_atomically(target, lambda temp: temp.write_text('output'), durable=False)
    assert victim.read_text() == 'precious' and planted.is_symlink()
    assert target.read_text() == 'output' and not target.is_symlink()
    assert sorted(p.name for p in out.iterdir()) == sorted([target.name, planted.name])


def test_temporaries_get_the_usual_file_mode_not_a_private_one(tmp_path):
    target = tmp_path / 'result.txt'
    atomic.replace_atomically(target, lambda temp: temp.write_text('x'), durable=False)
    assert target.stat().st_mode & 0o777 == atomic.new_file_mode()


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path):
    target = tmp_path / 'result.txt'
    target.write_text('old')

    def failing(temp: Path) -> None:
        temp.write_text('half')
        raise OSError(errno.ENOSPC, 'No space left on device')

    with pytest.raises(OSError):
        atomic.replace_atomically(target, failing, durable=False)
    assert target.read_text() == 'old' and [p.name for p in tmp_path.iterdir()] == ['result.txt']
