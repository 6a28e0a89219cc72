"""Careless and hostile input: nothing lost, nothing written outside where the user pointed, one clear line for
every refusal (issue 17's cases and their siblings)."""
import errno
import pickle
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import lksmn_arch  # noqa: F401
from lksmn_arch.cli import export as export_cli
from lksmn_arch.cli import upscale as upscale_cli
from lksmn_arch.inference import export
from lksmn_arch.inference import files as upscale
from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.utils.checkpoint import CheckpointError, UnsafeCheckpointError, build_model_from_checkpoint
from lksmn_arch.training.pipeline import OptionsError, _prepare

from conftest import paired_dataset_options, run_module, training_options, write_yaml

SCALE = 2


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'lksmn_x2.pth'
    torch.save({'params_ema': LKSMN(upscale=SCALE, num_feat=12, num_block=1).state_dict()}, path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / 'in'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ('a', 'b'):
        cv2.imwrite(str(folder / f'{name}.png'), rng.integers(0, 256, (8, 10, 3), dtype=np.uint8))
    return folder


def _one_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and 'Traceback' not in err


# --- 1. no overwrite of an input or of anything the command did not create ----------------------------------

def test_export_refuses_to_write_over_its_input_checkpoint(checkpoint, capsys):
    before = checkpoint.read_bytes()
    assert export_cli.main(['-m', str(checkpoint), '--onnx', str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and 'is the input checkpoint' in err
    assert checkpoint.read_bytes() == before


def test_export_refuses_an_existing_output_unless_overwrite(checkpoint, tmp_path, capsys):
    target = tmp_path / 'weights.safetensors'
    target.write_text('precious')
    assert export_cli.main(['-m', str(checkpoint), '--safetensors', str(target)]) == 2
    assert _one_line(capsys.readouterr().err) and target.read_text() == 'precious'
    assert export_cli.main(['-m', str(checkpoint), '--safetensors', str(target), '--overwrite']) == 0
    assert build_model_from_checkpoint(target)[1]['upscale'] == SCALE


def test_upscale_skips_existing_outputs_unless_overwrite(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'a_x2.png').write_text('not mine')
    assert upscale_cli.main(['-i', str(photos), '-o', str(out), '-m', str(checkpoint), '--backend', 'torch', '--quiet']) == 0
    assert (out / 'a_x2.png').read_text() == 'not mine' and (out / 'b_x2.png').is_file()
    assert '1 image(s) skipped' in capsys.readouterr().out
    assert upscale_cli.main(['-i', str(photos), '-o', str(out), '-m', str(checkpoint), '--backend', 'torch', '--quiet',
                         '--overwrite']) == 0
    assert cv2.imread(str(out / 'a_x2.png')).shape == (16, 20, 3)


def test_upscale_into_its_input_folder_does_not_upscale_its_own_outputs_again(checkpoint, photos):
    args = ['-i', str(photos), '-o', str(photos), '-m', str(checkpoint), '--backend', 'torch', '--quiet']
    assert upscale_cli.main(args) == 0
    report = upscale.upscale_paths(photos, photos, checkpoint, backend='torch', progress=False)
    assert report.written == [] and not list(photos.glob('*_x2_x2*'))
    assert sorted(p.name for p, _ in report.skipped) == ['a.png', 'a_x2.png', 'b.png', 'b_x2.png']


# --- 2. confinement --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['../data', '../../elsewhere', '', '..', 'a/b', '.hidden', '/abs'])
def test_experiment_name_must_be_a_plain_name(tiny_pairs, tmp_path, name):
    opt = training_options(name, paired_dataset_options('t', tiny_pairs['train_gt'], tiny_pairs['train_lq'], 'train'),
                           None)
    with pytest.raises(OptionsError, match='must be a plain name'):
        _prepare('lksmn-train', ['-opt', str(write_yaml(tmp_path / 'o.yml', opt))], is_train=True)


def test_a_dataset_folder_named_by_a_path_like_name_is_left_alone(tiny_pairs, tmp_path):
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'keep.txt').write_text('user data')
    work = tmp_path / 'work'
    work.mkdir()
    opt = training_options('../data', paired_dataset_options('t', tiny_pairs['train_gt'], tiny_pairs['train_lq'],
                                                               'train'), None)
    result = run_module('lksmn_arch.cli.train', '-opt', str(write_yaml(work / 'o.yml', opt)), cwd=work)
    assert result.returncode == 2 and _one_line(result.stderr) and 'plain name' in result.stderr
    assert (data / 'keep.txt').read_text() == 'user data' and not (work / 'experiments').exists()


@pytest.mark.parametrize('suffix', ['/x', '../up', 'a/b'])
def test_upscale_suffix_cannot_carry_a_path(checkpoint, photos, tmp_path, suffix, capsys):
    assert upscale_cli.main(['-i', str(photos), '-o', str(tmp_path / 'out'), '-m', str(checkpoint), '--suffix', suffix,
                         '--backend', 'torch', '--quiet']) == 2
    assert 'no path separators' in capsys.readouterr().err
    assert not (tmp_path / 'up').exists()


# --- 3. results that cannot be trusted are refused ----------------------------------------------------------

@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_non_finite_weights_are_refused_naming_the_tensor(checkpoint, photos, tmp_path, value, capsys):
    state = torch.load(checkpoint, weights_only=True)['params_ema']
    state['conv_last.weight' if 'conv_last.weight' in state else 'upsampler.0.weight'][0, 0, 0, 0] = value
    bad = tmp_path / 'bad.pth'
    torch.save({'params': state}, bad)
    with pytest.raises(CheckpointError, match=r'tensor \S+ holds 1 NaN or inf'):
        build_model_from_checkpoint(bad)
    assert upscale_cli.main(['-i', str(photos), '-o', str(tmp_path / 'out'), '-m', str(bad), '--backend', 'torch',
                         '--quiet']) == 2
    assert 'NaN or inf' in capsys.readouterr().err and not (tmp_path / 'out').exists()


def test_lksmn_test_without_weights_is_refused_unless_random_weights(tiny_pairs, tmp_path):
    opt = {'name': 'nowts', 'model_type': 'LKSMNModel', 'scale': 2, 'num_gpu': 'auto',
           'datasets': {'test_1': paired_dataset_options('v', tiny_pairs['val_gt'], tiny_pairs['val_lq'], 'val')},
           'network_g': {'type': 'LKSMN', 'upscale': 2}, 'path': {'pretrain_network_g': None}, 'val': {}}
    path = str(write_yaml(tmp_path / 'test.yml', opt))
    with pytest.raises(OptionsError, match='would score random weights'):
        _prepare('lksmn-test', ['-opt', path], is_train=False)
    argv, _ = _prepare('lksmn-test', ['-opt', path, '--random-weights'], is_train=False)
    assert '--random-weights' not in argv  # BasicSR's own parser never sees it


def test_a_damaged_cached_export_is_made_again(checkpoint, tmp_path):
    cache = tmp_path / 'cache'
    notes = []
    first = upscale.cached_onnx_export(checkpoint, cache, log=notes.append)
    good = first.read_bytes()
    first.write_bytes(good[:len(good) // 2])  # damaged
    again = upscale.cached_onnx_export(checkpoint, cache, log=notes.append)
    assert again == first and again.read_bytes() == good
    assert any('does not match its recorded hash' in n for n in notes)


@pytest.mark.parametrize('opset', [5, 17, 99])
def test_export_refuses_an_opset_it_cannot_write_and_leaves_nothing(checkpoint, tmp_path, opset, capsys):
    target = tmp_path / 'm.onnx'
    assert export_cli.main(['-m', str(checkpoint), '--onnx', str(target), '--opset', str(opset)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and f'--opset {opset}' in err
    assert not target.exists() and not list(tmp_path.iterdir())


# --- 4. one line per refusal ---------------------------------------------------------------------------------

@pytest.mark.parametrize('change, message', [
    ({'num_feat': 32}, 'network_g: LKSMN: num_feat (32) must be divisible'),
    ({'upscale': 5}, 'scale 5: LKSMN supports 2, 3, 4'),
])
def test_network_options_are_checked_before_training(tiny_pairs, tmp_path, change, message):
    opt = training_options('net', paired_dataset_options('t', tiny_pairs['train_gt'], tiny_pairs['train_lq'], 'train'),
                           None)
    opt['network_g'] = {'type': 'LKSMN', 'upscale': 2, **change}  # the default network, three LKCD groups
    opt['scale'] = opt['network_g']['upscale']
    with pytest.raises(OptionsError, match=re.escape(message)):
        _prepare('lksmn-train', ['-opt', str(write_yaml(tmp_path / 'o.yml', opt))], is_train=True)


def test_pretrained_weights_of_another_network_are_one_line(tiny_pairs, tmp_path):
    other = tmp_path / 'other.pth'
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), other)  # a bare state dict of something else
    opt = training_options('other', paired_dataset_options('t', tiny_pairs['train_gt'], tiny_pairs['train_lq'],
                                                             'train'), None, total_iter=1)
    opt['path']['pretrain_network_g'] = str(other)
    result = run_module('lksmn_arch.cli.train', '-opt', str(write_yaml(tmp_path / 'o.yml', opt)), cwd=tmp_path)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert 'does not fit network_g (LKSMN)' in result.stderr.splitlines()[-1]


def test_a_plain_pickle_is_refused_as_holding_code(tmp_path):
    path = tmp_path / 'model.pth'
    path.write_bytes(pickle.dumps({'params': {'w': [1, 2, 3]}}, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match='plain Python pickle'):
        build_model_from_checkpoint(path)


def test_ctrl_c_in_upscale_is_one_line_and_status_130(checkpoint, photos, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(upscale.Upscaler, 'upscale_image', interrupted)
    assert upscale_cli.main(['-i', str(photos), '-o', str(tmp_path / 'out'), '-m', str(checkpoint), '--backend', 'torch',
                         '--quiet']) == 130
    assert _one_line(capsys.readouterr().err)
    assert [p for p in (tmp_path / 'out').iterdir()] == []


def test_read_only_output_stops_at_the_first_image_with_one_message(checkpoint, photos, tmp_path, monkeypatch, capsys):
    calls = []

    def read_only(path, img):
        calls.append(path)
        raise OSError(errno.EROFS, 'Read-only file system')
    monkeypatch.setattr(upscale, 'write_image_atomic', read_only)
    assert upscale_cli.main(['-i', str(photos), '-o', str(tmp_path / 'out'), '-m', str(checkpoint), '--backend', 'torch',
                         '--quiet']) == 2
    err = capsys.readouterr().err
    assert len(calls) == 1 and _one_line(err) and 'stopped after 0 image(s)' in err


def test_unwritable_cache_dir_falls_back_to_pytorch_naming_the_variable(checkpoint, photos, tmp_path, monkeypatch):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    monkeypatch.setenv('LKSMN_CACHE_DIR', str(blocker / 'cache'))
    monkeypatch.setattr(upscale, 'resolve_backend', lambda *a: ('onnxruntime', 'test'))
    lines = []
    report = upscale.upscale_paths(photos, tmp_path / 'out', checkpoint, progress=False, log=lines.append)
    assert len(report.written) == 2
    assert any(line.startswith('backend: PyTorch (LKSMN_CACHE_DIR ') for line in lines)


# --- 5. size and cost guards ---------------------------------------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (a few hundred bytes; decoding it would need gigabytes)."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
                     + chunk(b'IEND', b''))
    return path


def test_a_huge_image_is_refused_from_its_header_before_decoding(checkpoint, tmp_path, monkeypatch, capsys):
    huge = _png_header_only(tmp_path / 'huge.png', 20000, 20000)
    decoded = []
    monkeypatch.setattr(upscale, 'read_image', lambda path: decoded.append(path))
    assert upscale_cli.main(['-i', str(huge), '-o', str(tmp_path / 'out'), '-m', str(checkpoint), '--backend', 'torch',
                         '--quiet']) == 1
    err = capsys.readouterr().err
    assert '20000x20000 = 400 MP is over the limit' in err and '--max-pixels' in err and decoded == []


def test_an_animated_image_is_refused_naming_its_frames(checkpoint, tmp_path, capsys):
    frames = [Image.new('RGB', (8, 8), (i * 80, 0, 0)) for i in range(3)]
    animated = tmp_path / 'anim.webp'
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert upscale_cli.main(['-i', str(animated), '-o', str(tmp_path / 'out'), '-m', str(checkpoint), '--backend',
                         'torch', '--quiet']) == 1
    assert 'it has 3 frames' in capsys.readouterr().err


def test_tiles_far_smaller_than_their_padding_are_refused_and_small_ones_get_a_warning(checkpoint, photos, tmp_path,
                                                                                        capsys):
    assert upscale_cli.main(['-i', str(photos), '-o', str(tmp_path / 'out'), '-m', str(checkpoint), '--tile', '1',
                             '--quiet']) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and '--tile 1 with --tile-pad 32' in err and '4225x' in err
    assert not (tmp_path / 'out').exists()  # refused before anything was written
    lines = []
    upscale.upscale_paths(photos, tmp_path / 'out1', checkpoint, tile=16, backend='torch', progress=False,
                          log=lines.append)
    assert any(line.startswith('warning: --tile 16 with --tile-pad 32') and '25x' in line for line in lines)
    lines.clear()
    upscale.upscale_paths(photos, tmp_path / 'out2', checkpoint, tile=128, backend='torch', progress=False,
                          log=lines.append)
    assert not any(line.startswith('warning') for line in lines)
