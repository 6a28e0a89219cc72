"""lksmn-prepare: LR is MATLAB bicubic of the mod-cropped HR, sub-images align, LMDBs load in BasicSR,
re-runs resume, bad input is named."""
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import pytest
import skimage.data

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.data.transforms import mod_crop
from basicsr.utils.matlab_functions import imresize
from lksmn_arch.cli import prepare as prepare_cli
from lksmn_arch.data import prepare
SETTINGS = prepare.SubImageSettings(scales=(2, 3, 4), crop=48, step=24, thresh=0)
ROOT = Path(__file__).resolve().parents[1]


def astronaut(h: int, w: int, top: int = 100, left: int = 150) -> np.ndarray:
    """A textured BGR crop of scikit-image's astronaut photo."""
    return np.ascontiguousarray(skimage.data.astronaut()[top:top + h, left:left + w, ::-1])


def gray(h: int, w: int) -> np.ndarray:
    """A grayscale (single-channel) crop of scikit-image's camera photo."""
    return np.ascontiguousarray(skimage.data.camera()[200:200 + h, 200:200 + w])


def make_folder(folder: Path, images: Dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        assert cv2.imwrite(str(folder / name), img)
    return folder


def hr_images() -> Dict[str, np.ndarray]:
    # 0001: 110x150 -> mod-crop 108x144: rows 0 24 48 + 60 (extra), cols 0 24 48 72 96 -> 20 sub-images
    # 0002: grayscale 75x61 -> 72x60: rows 0 24, cols 0 + 12 (extra) -> 4 sub-images
    return {'0001.png': astronaut(110, 150), '0002.png': gray(75, 61)}


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def matlab_lr_float(hr: np.ndarray, scale: int) -> np.ndarray:
    """BasicSR's MATLAB imresize of an HR uint8 image, in 0..255 floats, before rounding."""
    return imresize(hr.astype(np.float32) / 255., 1 / scale) * 255.


def assert_rounds_from(lr: np.ndarray, reference: np.ndarray) -> None:
    """``lr`` (uint8) is ``reference`` (float) rounded to the nearest integer and clipped."""
    assert lr.dtype == np.uint8 and lr.shape == reference.shape
    assert np.abs(lr.astype(np.float64) - np.clip(reference, 0, 255)).max() <= 0.5 + 1e-3


def run_div2k(tmp_path: Path, **kwargs) -> prepare.PrepareSummary:
    hr = tmp_path / 'hr'
    if not hr.exists():
        make_folder(hr, hr_images())
    options = dict(settings=SETTINGS, workers=1)
    options.update(kwargs)
    return prepare.prepare_div2k([hr], tmp_path / 'out', 'T', **options)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    """One finished div2k run (with LMDBs) shared by the read-only tests."""
    tmp_path = tmp_path_factory.mktemp('div2k')
    summary = run_div2k(tmp_path)
    return tmp_path, summary


# ----------------------------------------------------------------------------------------------------
# Geometry and bicubic


def test_grid_adds_a_last_position_flush_with_the_border_only_beyond_thresh():
    assert prepare.grid_positions(1000, 480, 240, 0) == [0, 240, 480, 520]
    assert prepare.grid_positions(1000, 480, 240, 40) == [0, 240, 480]  # 40 px left, not more than thresh
    assert prepare.grid_positions(960, 480, 240, 0) == [0, 240, 480]  # nothing left over
    assert prepare.grid_positions(479, 480, 240, 0) == []


def test_lr_has_the_exact_bicubic_size_and_is_matlab_imresize_of_the_mod_cropped_hr():
    img = astronaut(101, 83)
    for scale in (2, 3, 4):
        hr = mod_crop(img, scale)
        lr = prepare.bicubic_downscale(hr, scale)
        assert lr.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3)
        assert_rounds_from(lr, matlab_lr_float(hr, scale))
    with pytest.raises(ValueError, match='multiple of the scale 4'):
        prepare.bicubic_downscale(img, 4)


# ----------------------------------------------------------------------------------------------------
# div2k: sub-images


def test_every_folder_holds_the_same_sub_image_names_numbered_row_by_row(built):
    tmp_path, summary = built
    expected = [f'0001_s{i:03d}.png' for i in range(1, 21)] + [f'0002_s{i:03d}.png' for i in range(1, 5)]
    assert summary.names == expected
    out = tmp_path / 'out'
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ['T_HR_sub', 'T_HR_sub.lmdb'] + [f'T_LR_bicubic_X{s}_sub{e}' for s in (2, 3, 4) for e in ('', '.lmdb')])
    for folder in summary.folders:
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith('.')) == expected


def test_hr_sub_images_are_crops_of_the_mod_cropped_hr_on_the_basicsr_grid(built):
    tmp_path, _ = built
    hr = mod_crop(astronaut(110, 150), 12)
    boxes = [(top, left) for top in (0, 24, 48, 60) for left in (0, 24, 48, 72, 96)]
    for index, (top, left) in enumerate(boxes, start=1):
        sub = read(tmp_path / 'out' / 'T_HR_sub' / f'0001_s{index:03d}.png')
        np.testing.assert_array_equal(sub, hr[top:top + 48, left:left + 48])
    last = read(tmp_path / 'out' / 'T_HR_sub' / '0002_s004.png')  # extra column at 60 - 48 = 12
    np.testing.assert_array_equal(last, cv2.cvtColor(gray(75, 61), cv2.COLOR_GRAY2BGR)[24:72, 12:60])


def test_lr_sub_images_are_the_full_lr_cropped_at_the_hr_position_over_the_scale(built):
    tmp_path, _ = built
    hr = mod_crop(astronaut(110, 150), 12)
    boxes = [(top, left) for top in (0, 24, 48, 60) for left in (0, 24, 48, 72, 96)]
    for scale in (2, 3, 4):
        full_lr = matlab_lr_float(hr, scale)
        size = 48 // scale
        for index, (top, left) in enumerate(boxes, start=1):
            lr_sub = read(tmp_path / 'out' / f'T_LR_bicubic_X{scale}_sub' / f'0001_s{index:03d}.png')
            y, x = top // scale, left // scale
            assert top == scale * y and left == scale * x
            assert_rounds_from(lr_sub, full_lr[y:y + size, x:x + size])
            # independent of the bookkeeping: downscaling the HR sub-image gives the same interior
            hr_sub = read(tmp_path / 'out' / 'T_HR_sub' / f'0001_s{index:03d}.png')
            interior = slice(3, size - 3)
            assert_rounds_from(lr_sub[interior, interior], matlab_lr_float(hr_sub, scale)[interior, interior])


def test_grayscale_hr_images_give_three_channel_sub_images(built):
    tmp_path, _ = built
    for folder in ('T_HR_sub', 'T_LR_bicubic_X4_sub'):
        assert read(tmp_path / 'out' / folder / '0002_s001.png').shape[2] == 3


def test_lmdbs_load_in_basicsr_paired_image_dataset_with_matching_sizes(built):
    tmp_path, summary = built
    out = tmp_path / 'out'
    meta = (out / 'T_HR_sub.lmdb' / 'meta_info.txt').read_text().splitlines()
    assert meta[0] == '0001_s001.png (48,48,3) 1' and len(meta) == len(summary.names)
    for scale in (3, 4):
        lq_size = 48 // scale
        opt = {'dataroot_gt': str(out / 'T_HR_sub.lmdb'), 'dataroot_lq': str(out / f'T_LR_bicubic_X{scale}_sub.lmdb'),
               'io_backend': {'type': 'lmdb'}, 'phase': 'val', 'scale': scale}
        dataset = PairedImageDataset(opt)
        assert len(dataset) == len(summary.names)
        item = dataset[5]
        assert item['gt_path'] == item['lq_path'] == '0001_s006'
        assert tuple(item['gt'].shape) == (3, 48, 48) and tuple(item['lq'].shape) == (3, lq_size, lq_size)
        png = read(out / f'T_LR_bicubic_X{scale}_sub' / '0001_s006.png')[:, :, ::-1].transpose(2, 0, 1) / 255.
        np.testing.assert_allclose(item['lq'].numpy(), png, atol=1e-6)
        train = PairedImageDataset(dict(opt, io_backend={'type': 'lmdb'}, phase='train', gt_size=24,
                                        use_hflip=True, use_rot=True))
        item = train[0]
        assert tuple(item['gt'].shape) == (3, 24, 24) and tuple(item['lq'].shape) == (3, 24 // scale, 24 // scale)


# ----------------------------------------------------------------------------------------------------
# div2k: re-running


def test_rerun_skips_finished_images_and_leaves_complete_lmdbs_alone(tmp_path, monkeypatch, capsys):
    first = run_div2k(tmp_path)
    out = tmp_path / 'out'
    watched = [out / 'T_HR_sub.lmdb' / 'data.mdb', out / 'T_LR_bicubic_X3_sub' / '0001_s007.png']
    before = [p.stat().st_mtime_ns for p in watched]

    def no_resize(*args, **kwargs):
        raise AssertionError('a finished image was downscaled again')

    monkeypatch.setattr(prepare, 'bicubic_downscale', no_resize)
    second = run_div2k(tmp_path)
    assert second.count('skipped') == 2 and second.names == first.names
    assert set(second.lmdbs.values()) == {'up to date'}
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert 'up to date, left alone' in capsys.readouterr().out


def test_rerun_redoes_only_missing_sub_images_and_clears_stale_temporary_files(tmp_path, monkeypatch):
    run_div2k(tmp_path, lmdb=False)
    lr3 = tmp_path / 'out' / 'T_LR_bicubic_X3_sub'
    original = (lr3 / '0001_s007.png').read_bytes()
    (lr3 / '0001_s007.png').unlink()
    stale = lr3 / '.0001_s007.png.999.tmp'  # what a killed writer leaves
    stale.write_bytes(b'half a png')
    calls = []
    real = prepare.bicubic_downscale
    monkeypatch.setattr(prepare, 'bicubic_downscale', lambda img, s: calls.append(s) or real(img, s))
    summary = run_div2k(tmp_path, lmdb=False)
    assert calls == [3]
    assert summary.count('written') == 1 and summary.count('skipped') == 1
    assert (lr3 / '0001_s007.png').read_bytes() == original
    assert not stale.exists()


def test_interrupted_lmdb_build_is_not_taken_as_complete_and_is_rebuilt(tmp_path, monkeypatch, capsys):
    real = prepare.make_lmdb_from_imgs

    def crash_half_way(data_path, lmdb_path, img_path_list, keys, **kwargs):
        real(data_path, lmdb_path, img_path_list[:3], keys[:3], **kwargs)
        raise RuntimeError('simulated crash')

    monkeypatch.setattr(prepare, 'make_lmdb_from_imgs', crash_half_way)
    with pytest.raises(RuntimeError, match='simulated crash'):
        run_div2k(tmp_path)
    hr_folder = tmp_path / 'out' / 'T_HR_sub'
    final, temp = prepare.lmdb_path(hr_folder), prepare.lmdb_temp_path(hr_folder)
    assert temp.is_dir() and (temp / 'meta_info.txt').is_file()  # looks finished inside, but is not in place
    assert not final.exists() and not prepare.lmdb_is_complete(final)

    monkeypatch.setattr(prepare, 'make_lmdb_from_imgs', real)
    summary = run_div2k(tmp_path)
    assert summary.lmdbs[final] == 'built' and not temp.exists()
    assert prepare.lmdb_keys(final) == [Path(n).stem for n in summary.names]
    assert 'incomplete LMDB left by an interrupted run' in capsys.readouterr().out


def test_complete_lmdb_missing_new_images_is_refused_instead_of_kept(tmp_path, capsys):
    run_div2k(tmp_path)
    make_folder(tmp_path / 'hr', {'0003.png': astronaut(48, 48, 300, 300)})
    with pytest.raises(prepare.PrepareError, match=r'T_HR_sub\.lmdb is complete but holds 24 images .* now has 25'):
        run_div2k(tmp_path)
    assert (tmp_path / 'out' / 'T_LR_bicubic_X2_sub' / '0003_s001.png').is_file()  # the new image was processed


def test_an_lmdb_path_without_meta_info_is_refused_before_any_work(tmp_path):
    broken = tmp_path / 'out' / 'T_HR_sub.lmdb'
    broken.mkdir(parents=True)
    (broken / 'data.mdb').write_bytes(b'')
    with pytest.raises(prepare.PrepareError, match=re.escape(str(broken))):
        run_div2k(tmp_path)
    assert not (tmp_path / 'out' / 'T_HR_sub').exists()


def test_changed_grid_settings_are_refused_and_overwrite_redoes_everything(tmp_path):
    run_div2k(tmp_path)
    other = prepare.SubImageSettings(scales=(2, 3, 4), crop=24, step=12)
    with pytest.raises(prepare.PrepareError, match='crop 48.*crop 24.*--overwrite'):
        run_div2k(tmp_path, settings=other)
    summary = run_div2k(tmp_path, settings=other, overwrite=True)
    assert summary.count('written') == 2
    assert read(tmp_path / 'out' / 'T_HR_sub' / summary.names[0]).shape == (24, 24, 3)
    for folder in summary.folders:
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith('.')) == summary.names
        assert prepare.lmdb_keys(prepare.lmdb_path(folder)) == [Path(n).stem for n in summary.names]


def test_existing_folder_not_made_by_the_command_is_refused(tmp_path):
    foreign = make_folder(tmp_path / 'out' / 'T_LR_bicubic_X4_sub', {'0001_s001.png': astronaut(12, 12)})
    with pytest.raises(prepare.PrepareError, match=re.escape(str(foreign))):
        run_div2k(tmp_path)


# ----------------------------------------------------------------------------------------------------
# benchmark


def test_benchmark_writes_gtmod_and_lrbicx_with_exact_sizes(tmp_path):
    hr = make_folder(tmp_path / 'Set2', {'bird.png': astronaut(101, 83), 'man.png': gray(50, 37)})
    summary = prepare.prepare_benchmark(hr, tmp_path / 'out', scales=(2, 3, 4), workers=1)
    assert summary.count('written') == 2
    for scale in (2, 3, 4):
        for name, source in (('bird.png', astronaut(101, 83)), ('man.png', cv2.cvtColor(gray(50, 37),
                                                                                      cv2.COLOR_GRAY2BGR))):
            gt = read(tmp_path / 'out' / f'GTmod{scale}' / name)
            lr = read(tmp_path / 'out' / f'LRbicx{scale}' / name)
            h, w = source.shape[0] // scale * scale, source.shape[1] // scale * scale
            np.testing.assert_array_equal(gt, source[:h, :w])
            assert lr.shape == (h // scale, w // scale, 3)
            assert_rounds_from(lr, matlab_lr_float(gt, scale))


def test_benchmark_with_several_workers_writes_the_same_files_as_one_process(tmp_path):
    hr = make_folder(tmp_path / 'hr', {'a.png': astronaut(40, 52), 'b.png': astronaut(44, 36, 300, 300)})
    assert prepare_cli.main(['benchmark', '--hr', str(hr), '--out', str(tmp_path / 'one'), '--scales', '4',
                         '--workers', '1']) == 0
    assert prepare_cli.main(['benchmark', '--hr', str(hr), '--out', str(tmp_path / 'two'), '--scales', '4',
                         '--workers', '2']) == 0
    for folder in ('GTmod4', 'LRbicx4'):
        for name in ('a.png', 'b.png'):
            assert (tmp_path / 'one' / folder / name).read_bytes() == (tmp_path / 'two' / folder / name).read_bytes()


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_missing_hr_folder_is_named_in_the_error(tmp_path, capsys):
    missing = tmp_path / 'no_such_folder'
    assert prepare_cli.main(['div2k', '--hr', str(missing), '--out', str(tmp_path / 'out'), '--name', 'T']) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and 'does not exist' in err
    assert prepare_cli.main(['benchmark', '--hr', str(missing), '--out', str(tmp_path / 'out')]) == 2
    assert str(missing) in capsys.readouterr().err


def test_hr_folder_without_images_is_named_in_the_error(tmp_path, capsys):
    empty = tmp_path / 'empty'
    make_folder(empty, {})
    (empty / 'notes.txt').write_text('not an image')
    assert prepare_cli.main(['div2k', '--hr', str(empty), '--out', str(tmp_path / 'out'), '--name', 'T']) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and 'no images' in err


def test_unreadable_image_is_named_others_are_processed_and_no_lmdb_is_built(tmp_path, capsys):
    hr = make_folder(tmp_path / 'hr', {'0001.png': astronaut(48, 48)})
    (hr / '0002.png').write_bytes(b'this is not a png')
    args = ['div2k', '--hr', str(hr), '--out', str(tmp_path / 'out'), '--name', 'T', '--crop', '48', '--step', '24',
            '--workers', '2']
    assert prepare_cli.main(args) == 1
    err = capsys.readouterr().err
    assert f'{hr / "0002.png"}: not a readable image' in err and '--skip-unreadable' in err
    assert (tmp_path / 'out' / 'T_LR_bicubic_X4_sub' / '0001_s001.png').is_file()
    assert not list((tmp_path / 'out').glob('*.lmdb'))

    assert prepare_cli.main(args + ['--skip-unreadable']) == 0
    assert str(hr / '0002.png') in capsys.readouterr().err
    assert prepare.lmdb_keys(tmp_path / 'out' / 'T_HR_sub.lmdb') == ['0001_s001']


def test_images_smaller_than_the_crop_are_skipped_with_a_warning(tmp_path, capsys):
    hr = make_folder(tmp_path / 'hr', {'big.png': astronaut(48, 48), 'tiny.png': astronaut(30, 60)})
    summary = prepare.prepare_div2k([hr], tmp_path / 'out', 'T', SETTINGS, workers=1, lmdb=False)
    assert summary.count('too_small') == 1 and summary.names == ['big_s001.png']
    assert f'{hr / "tiny.png"}: 24x60 after mod-crop' in capsys.readouterr().err


def test_same_file_name_in_two_hr_folders_is_refused_naming_both(tmp_path):
    a = make_folder(tmp_path / 'a', {'0001.png': astronaut(48, 48)})
    b = make_folder(tmp_path / 'b', {'0001.jpg': astronaut(48, 48)})
    with pytest.raises(prepare.PrepareError) as error:
        prepare.prepare_div2k([a, b], tmp_path / 'out', 'T', SETTINGS, workers=1)
    assert str(a / '0001.png') in str(error.value) and str(b / '0001.jpg') in str(error.value)


def test_crop_that_is_not_a_multiple_of_the_scales_lcm_is_refused(tmp_path, capsys):
    hr = make_folder(tmp_path / 'hr', {'0001.png': astronaut(48, 48)})
    assert prepare_cli.main(['div2k', '--hr', str(hr), '--out', str(tmp_path / 'out'), '--name', 'T',
                         '--crop', '50']) == 2
    assert 'multiples of 12' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------------------------------
# Command line


def test_help_explains_the_output_layout(capsys):
    for command, words in (('div2k', ['NAME_HR_sub/', 'NAME_LR_bicubic_X{s}_sub/', '.lmdb', 'meta_info.txt',
                                      '--overwrite', 'lcm(scales)']),
                           ('benchmark', ['GTmod{s}/', 'LRbicx{s}/', 'datasets/Set5/LRbicx4'])):
        with pytest.raises(SystemExit) as done:
            prepare_cli.main([command, '--help'])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert all(word in out for word in words), command


def test_module_command_exits_with_status_2_and_names_the_missing_folder(tmp_path):
    missing = tmp_path / 'missing'
    result = subprocess.run([sys.executable, '-m', 'lksmn_arch.cli.prepare', 'benchmark', '--hr', str(missing),
                             '--out', str(tmp_path / 'out')], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f'lksmn-prepare: error: HR folder {missing} does not exist' in result.stderr
    assert 'Traceback' not in result.stderr
