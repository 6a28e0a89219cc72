"""lksmn-upscale: image files in, upscaled files out; modes, bit depth, EXIF, failures, safety."""
import os
import runpy
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import lksmn_arch  # noqa: F401
from lksmn_arch.cli import upscale as upscale_cli
from lksmn_arch.inference import files as upscale
from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.cli.upscale import main
from lksmn_arch.inference.files import apply_orientation, read_image, upscale_paths, write_image_atomic

SCALE = 2
H, W = 10, 14


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'lksmn_x2.pth'
    torch.save({'params_ema': LKSMN(upscale=SCALE, num_feat=24, num_block=2).state_dict()}, path)
    return path


def _write(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img)
    return path


def _leftover_temp_files(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.endswith('.tmp')]


def test_cli_upscales_rgb_gray_rgba_and_16_bit_images_and_reports_the_corrupt_one(tmp_path, checkpoint, capsys):
    rng = np.random.default_rng(0)
    src, out = tmp_path / 'in', tmp_path / 'out'
    src.mkdir()
    _write(src / 'rgb.png', rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    _write(src / 'gray.png', rng.integers(0, 256, (H, W), dtype=np.uint8))
    _write(src / 'rgba.png', rng.integers(0, 256, (H, W, 4), dtype=np.uint8))
    _write(src / 'deep.png', rng.integers(0, 65536, (H, W, 3), dtype=np.uint16))
    _write(src / 'deep_gray.png', rng.integers(0, 65536, (H, W), dtype=np.uint16))
    _write(src / 'photo.jpg', rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    (src / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not really a png')
    (src / 'notes.txt').write_text('not an image, not picked up')

    status = main(['-i', str(src), '-o', str(out), '-m', str(checkpoint), '--quiet'])

    assert status == 1
    err = capsys.readouterr().err
    assert 'broken.png' in err and 'cannot read its image header' in err
    expected = {
        'rgb_x2.png': ((H * 2, W * 2, 3), np.uint8), 'gray_x2.png': ((H * 2, W * 2), np.uint8),
        'rgba_x2.png': ((H * 2, W * 2, 4), np.uint8), 'deep_x2.png': ((H * 2, W * 2, 3), np.uint16),
        'deep_gray_x2.png': ((H * 2, W * 2), np.uint16), 'photo_x2.jpg': ((H * 2, W * 2, 3), np.uint8),
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for name, (shape, dtype) in expected.items():
        written = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert written.shape == shape and written.dtype == dtype, name
    umask = os.umask(0)
    os.umask(umask)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in out.iterdir())  # not mkstemp's 0600
    deep = cv2.imread(str(out / 'deep_x2.png'), cv2.IMREAD_UNCHANGED)
    assert np.any(deep % 257 != 0)  # real 16-bit values, not 8-bit ones scaled up


@pytest.mark.filterwarnings('ignore:.*found in sys.modules:RuntimeWarning')  # runpy, module already imported
def test_one_image_file_through_python_dash_m(tmp_path, checkpoint, monkeypatch):
    _write(tmp_path / 'one.png', np.full((H, W, 3), 128, np.uint8))
    monkeypatch.setattr(sys, 'argv', ['lksmn_arch.inference.files', '-i', str(tmp_path / 'one.png'), '-o',
                                      str(tmp_path / 'out'), '-m', str(checkpoint), '--suffix', '_big', '--quiet'])
    with pytest.raises(SystemExit) as info:
        runpy.run_module('lksmn_arch.cli.upscale', run_name='__main__', alter_sys=False)
    assert info.value.code == 0
    assert cv2.imread(str(tmp_path / 'out' / 'one_big.png')).shape == (H * 2, W * 2, 3)


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_applied_like_pillow_does(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / 'oriented.png'
    image.save(path, exif=exif.tobytes())

    decoded, depth = read_image(path)

    with Image.open(path) as reference:
        upright = np.asarray(ImageOps.exif_transpose(reference).convert('RGB'))
    assert depth == 8 and np.array_equal(decoded, upright)
    assert np.array_equal(apply_orientation(pixels, orientation), upright)


def test_rotated_jpeg_is_upscaled_upright(tmp_path, checkpoint):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 16, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    image.save(tmp_path / 'camera.jpg', exif=exif.tobytes())
    report = upscale_paths(tmp_path / 'camera.jpg', tmp_path / 'out', checkpoint, progress=False)
    assert report.ok
    assert cv2.imread(str(tmp_path / 'out' / 'camera_x2.jpg')).shape == (16 * 2, 8 * 2, 3)


def test_output_never_overwrites_an_input_file(tmp_path, checkpoint, capsys):
    first = _write(tmp_path / 'a.png', np.full((H, W, 3), 10, np.uint8))
    second = _write(tmp_path / 'a_x2.png', np.full((H, W, 3), 20, np.uint8))  # a.png's default output name
    before = {p: p.read_bytes() for p in (first, second)}

    same_name = main(['-i', str(tmp_path), '-o', str(tmp_path), '-m', str(checkpoint), '--suffix', '', '--quiet'])
    default = main(['-i', str(tmp_path), '-o', str(tmp_path), '-m', str(checkpoint), '--quiet'])

    overwrite = main(['-i', str(tmp_path), '-o', str(tmp_path), '-m', str(checkpoint), '--quiet', '--overwrite'])

    assert same_name == 1 and overwrite == 1
    assert default == 0  # a_x2.png exists (a.png skipped) and is named like an output here (not upscaled again)
    assert 'refusing to overwrite' in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (first, second)} == before
    assert not (tmp_path / 'a_x2_x2.png').exists()
    assert _leftover_temp_files(tmp_path) == []


def test_tta_through_the_cli_gives_the_upscaled_shape(tmp_path, checkpoint):
    _write(tmp_path / 'small.png', np.random.default_rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8))
    status = main(['-i', str(tmp_path / 'small.png'), '-o', str(tmp_path / 'out'), '-m', str(checkpoint),
                   '--tta', '--tile', '4', '--tile-pad', '2', '--device', 'cpu', '--quiet'])
    assert status == 0
    assert cv2.imread(str(tmp_path / 'out' / 'small_x2.png')).shape == (14, 10, 3)


def test_explicit_jpg_drops_alpha_and_says_so_while_auto_keeps_it(tmp_path, checkpoint):
    _write(tmp_path / 'logo.png', np.random.default_rng(2).integers(0, 256, (H, W, 4), dtype=np.uint8))
    jpg = upscale_paths(tmp_path / 'logo.png', tmp_path / 'jpg', checkpoint, ext='jpg', progress=False)
    assert jpg.ok and 'alpha dropped' in jpg.notes[0][1]
    assert cv2.imread(str(tmp_path / 'jpg' / 'logo_x2.jpg'), cv2.IMREAD_UNCHANGED).shape == (H * 2, W * 2, 3)
    webp = upscale_paths(tmp_path / 'logo.png', tmp_path / 'webp', checkpoint, ext='webp', alpha='bicubic',
                         progress=False)
    assert webp.ok and not webp.notes
    assert cv2.imread(str(tmp_path / 'webp' / 'logo_x2.webp'), cv2.IMREAD_UNCHANGED).shape == (H * 2, W * 2, 4)


def test_failed_write_leaves_neither_output_nor_temp_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError('disk full')

    monkeypatch.setattr(upscale.os, 'replace', broken_replace)
    with pytest.raises(OSError, match='disk full'):
        write_image_atomic(tmp_path / 'x.png', np.zeros((4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('extra, message', [
    (['-m', 'missing.pth'], 'missing.pth does not exist'),
    (['-m', 'model.onnx'], 'cannot load ONNX model model.onnx'),
    (['-m', 'model.onnx', '--backend', 'torch'], 'use --backend onnxruntime'),
    (['--device', 'cpu', '--precision', 'fp16'], "'fp16' needs a CUDA device"),
    (['--tile', '-3'], 'tile must be'),
    (['-m', 'model.onnx', '--backend', 'onnxruntime', '--exact-tiles'], '--exact-tiles runs on PyTorch'),
])
def test_set_up_errors_exit_with_status_2_and_a_clear_message(tmp_path, checkpoint, capsys, monkeypatch, extra,
                                                              message):
    _write(tmp_path / 'img.png', np.zeros((H, W, 3), np.uint8))
    (tmp_path / 'model.onnx').write_bytes(b'onnx')
    monkeypatch.chdir(tmp_path)
    args = ['-i', 'img.png', '-o', 'out', '-m', str(checkpoint)] + extra
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_missing_input_is_a_set_up_error(tmp_path, checkpoint, capsys):
    assert main(['-i', str(tmp_path / 'nowhere'), '-o', str(tmp_path / 'out'), '-m', str(checkpoint)]) == 2
    assert 'nowhere does not exist' in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(['--help'])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ('--input', '--output', '--model', '--tile', '--tile-pad', '--device', '--precision', '--tta',
                 '--suffix', '--ext', '--backend', '--alpha'):
        assert flag in text


def test_quiet_still_names_the_model_and_the_backend_that_ran(tmp_path, checkpoint, capsys):
    _write(tmp_path / 'img.png', np.zeros((H, W, 3), np.uint8))
    assert main(['-i', str(tmp_path / 'img.png'), '-o', str(tmp_path / 'out'), '-m', str(checkpoint),
                 '--backend', 'torch', '--quiet']) == 0
    out = capsys.readouterr().out.splitlines()
    assert f'model: {checkpoint} (x{SCALE})' in out
    assert any(line.startswith('backend: PyTorch (--backend torch)') for line in out)


@pytest.mark.parametrize('args', [['--help'], ['-i', 'x.png', '-o', 'out', '--max-pixels', 'inf'],
                                  ['-i', 'x.png', '-o', 'out', '--tile', 'big']])
def test_help_and_argument_errors_answer_without_loading_torch_or_basicsr(tmp_path, args):
    script = Path(sys.executable).parent / 'lksmn-upscale'  # the console script users run
    done = subprocess.run([str(script), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, 'PYTHONPROFILEIMPORTTIME': '1'})
    imported = {line.split('|')[-1].strip() for line in done.stderr.splitlines() if line.startswith('import time:')}
    assert done.returncode in (0, 2) and imported
    assert not {'torch', 'basicsr', 'cv2', 'numpy'} & imported


def test_progress_bar_advances_by_each_images_megapixels_and_counts_the_images(tmp_path, checkpoint, capsys):
    photos = tmp_path / 'in'
    photos.mkdir()
    rng = np.random.default_rng(0)
    _write(photos / 'big.png', rng.integers(0, 255, (500, 600, 3), dtype=np.uint8))  # 0.30 MP
    _write(photos / 'small.png', rng.integers(0, 255, (100, 200, 3), dtype=np.uint8))  # 0.02 MP
    (photos / 'broken.png').write_bytes(b'not an image')  # no header: counts as 0 MP and fails on its own
    report = upscale_paths(photos, tmp_path / 'out', checkpoint, backend='torch', tile=0, progress=True)
    assert len(report.written) == 2 and len(report.failed) == 1
    bar = capsys.readouterr().err.replace('\r', '\n')
    assert '0.32/0.32 MP' in bar and 'image 3/3' in bar  # two decimals below 1 MP: never 0.0/0.0
    assert '100%' in bar


def test_quiet_progress_prints_no_bar(tmp_path, checkpoint, capsys):
    _write(tmp_path / 'a.png', np.zeros((20, 30, 3), np.uint8))
    upscale_paths(tmp_path / 'a.png', tmp_path / 'out', checkpoint, backend='torch', tile=0, progress=False)
    assert 'MP' not in capsys.readouterr().err


def test_exact_tiles_from_the_command_line_write_the_whole_image_output_on_pytorch(tmp_path, checkpoint, capsys):
    photo = _write(tmp_path / 'photo.png', np.random.default_rng(0).integers(0, 256, (80, 72, 3), dtype=np.uint8))
    assert main(['-i', str(photo), '-o', str(tmp_path / 'whole'), '-m', str(checkpoint), '--tile', '0',
                 '--backend', 'torch', '--quiet']) == 0
    assert main(['-i', str(photo), '-o', str(tmp_path / 'exact'), '-m', str(checkpoint), '--tile', '20',
                 '--exact-tiles', '--quiet']) == 0
    assert 'backend: PyTorch (--exact-tiles runs on PyTorch)' in capsys.readouterr().out
    whole, exact = (cv2.imread(str(tmp_path / folder / 'photo_x2.png')) for folder in ('whole', 'exact'))
    assert whole.shape == (160, 144, 3) and np.array_equal(exact, whole)
