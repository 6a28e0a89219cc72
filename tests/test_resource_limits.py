"""Hostile files meet a bound before they cost memory or time, and weights that cannot give a valid image are
refused instead of writing black images (issue 22: resource bombs and silent wrong results)."""
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import lksmn_arch  # noqa: F401
from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.cli import upscale as upscale_cli
from lksmn_arch.inference import files as upscale
from lksmn_arch.utils import checkpoint as ckpt


@pytest.fixture(scope='module')
def state_dict():
    torch.manual_seed(0)
    return LKSMN(upscale=2, num_feat=12, num_block=1).state_dict()


@pytest.fixture
def photo(tmp_path) -> Path:
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8))
    return folder


def _one_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and 'Traceback' not in err


def _upscale(args, capsys):
    status = upscale_cli.main(args + ['--backend', 'torch', '--quiet'])
    return status, capsys.readouterr().err


# --- image files -------------------------------------------------------------------------------------------

def test_a_huge_sparse_file_that_is_no_image_is_refused_without_reading_it(tmp_path, state_dict, capsys,
                                                                           monkeypatch):
    model = tmp_path / 'm.pth'
    torch.save({'params': state_dict}, model)
    huge = tmp_path / 'huge.png'
    with open(huge, 'wb') as handle:
        handle.truncate(8 * 2**30)  # 8 GiB, sparse: costs no disk
    monkeypatch.setattr(upscale.np, 'fromfile', lambda *a, **k: pytest.fail('the file was read'))
    status, err = _upscale(['-i', str(huge), '-o', str(tmp_path / 'out'), '-m', str(model)], capsys)
    assert status == 1 and 'huge.png' in err and 'GiB' in err


def _radiance_hdr(path: Path, width: int, height: int) -> None:
    """A small Radiance HDR file that declares a huge image (RLE scanlines of one colour)."""
    header = f'#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n'.encode()
    path.write_bytes(header + b'\x80\x80\x80\x80' * 16)


@pytest.mark.parametrize('maker', ['hdr', 'pam'])
def test_a_file_whose_header_pillow_cannot_read_is_refused_before_decoding(tmp_path, photo, capsys, maker,
                                                                           monkeypatch):
    bad = photo / 'sneaky.png'
    if maker == 'hdr':
        _radiance_hdr(bad, 8000, 8000)
    else:  # a PAM file named .png: OpenCV would decode it, Pillow cannot read its header
        bad.write_bytes(b'P7\nWIDTH 4000\nHEIGHT 4000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n' + b'\0' * 64)
    decoded = []
    real = upscale.cv2.imdecode
    monkeypatch.setattr(upscale.cv2, 'imdecode', lambda *a: decoded.append(1) or real(*a))
    with pytest.raises(ValueError, match='cannot read its image header'):
        upscale.check_header(bad)
    assert not decoded


@pytest.mark.parametrize('value', ['inf', 'nan', '-1', '0', 'lots'])
def test_max_pixels_that_is_not_a_positive_count_is_one_line(tmp_path, photo, capsys, value):
    status, err = _upscale(['-i', str(photo), '-o', str(tmp_path / 'out'), '--max-pixels', value], capsys)
    assert status == 2 and _one_line(err) and '--max-pixels' in err
    assert upscale.parse_max_pixels('50e6') == 50_000_000


# --- checkpoints -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [torch.int8, torch.bool])
def test_weights_that_are_not_floating_point_are_refused_naming_the_tensor(tmp_path, photo, state_dict, capsys,
                                                                           dtype):
    cast = {k: v.to(dtype) for k, v in state_dict.items()}
    model = tmp_path / 'cast.pth'
    torch.save({'params': cast}, model)
    status, err = _upscale(['-i', str(photo), '-o', str(tmp_path / 'out'), '-m', str(model)], capsys)
    assert status == 2 and _one_line(err) and 'conv_first.weight' in err and 'not floating point' in err
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())


def test_batchnorm_counters_are_the_integer_tensors_allowed(state_dict):
    ckpt.check_weights({**state_dict, 'blocks.0.norm.num_batches_tracked': torch.tensor(3)}, 'x')


def test_a_tensor_of_the_wrong_rank_is_a_checkpoint_error_not_an_index_error(state_dict):
    broken = {**state_dict, 'conv_first.weight': torch.zeros(())}
    with pytest.raises(ckpt.CheckpointError, match=r'conv_first.weight has shape \[\]'):
        ckpt.infer_lksmn_config(broken)


def test_a_compression_bomb_checkpoint_is_refused_from_its_declared_sizes(tmp_path, state_dict, monkeypatch):
    path = tmp_path / 'bomb.pth'
    torch.save({'params': state_dict}, path)
    with zipfile.ZipFile(path, 'a', compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open('bomb/data/padding', 'w', force_zip64=True) as member:
            chunk = b'\0' * 2**20
            for _ in range(300):  # 300 MiB that deflate to about 300 KiB
                member.write(chunk)
    assert path.stat().st_size < 2 * 2**20
    monkeypatch.setattr(ckpt.torch, 'load', lambda *a, **k: pytest.fail('torch.load ran'))
    with pytest.raises(ckpt.CheckpointError, match='compression bomb'):
        ckpt.read_checkpoint(path)


def test_an_ordinary_checkpoint_passes_the_declared_size_check(tmp_path, state_dict):
    path = tmp_path / 'ok.pth'
    torch.save({'params': state_dict}, path)
    ckpt.check_declared_size(path)
    assert set(ckpt.load_state_dict(path)) == set(state_dict)


def test_spandrel_refuses_nan_weights_and_calls_a_wrong_rank_file_unsupported(state_dict):
    import spandrel  # the spandrel extra, installed by scripts/setup_env.sh

    from lksmn_arch import spandrel_support
    spandrel_support.install()
    poisoned = {k: v.clone() for k, v in state_dict.items()}
    poisoned['conv_first.weight'][0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='conv_first.weight holds 1 NaN'):
        spandrel.ModelLoader().load_from_state_dict(poisoned)
    with pytest.raises(spandrel.UnsupportedModelError):
        spandrel.ModelLoader().load_from_state_dict({**state_dict, 'conv_first.weight': torch.zeros(3)})



# --- one line that says what is wrong ------------------------------------------------------------------------

def test_random_bytes_are_called_not_a_pytorch_file_not_a_pickle(tmp_path):
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8)))
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.read_checkpoint(garbage)
    assert 'pickle' not in str(error.value).split('neither')[0] and not isinstance(error.value,
                                                                                  ckpt.UnsafeCheckpointError)


@pytest.mark.parametrize('scale', ['0', '5'])
def test_a_scale_with_no_model_is_named_as_the_mistake(tmp_path, photo, capsys, scale):
    status, err = _upscale(['-i', str(photo), '-o', str(tmp_path / 'out'), '--scale', scale], capsys)
    assert status == 2 and _one_line(err) and f'--scale must be 2, 3 or 4, got {scale}' in err


def test_export_creates_a_missing_folder_and_refuses_a_file_in_the_way_in_one_line(tmp_path, state_dict, capsys):
    from lksmn_arch.cli import export as export_cli
    model = tmp_path / 'm.pth'
    torch.save({'params': state_dict}, model)
    target = tmp_path / 'new_folder' / 'm.safetensors'
    assert export_cli.main(['-m', str(model), '--safetensors', str(target)]) == 0 and target.is_file()
    (tmp_path / 'a_file').write_text('mine')
    assert export_cli.main(['-m', str(model), '--safetensors', str(tmp_path / 'a_file' / 'm.safetensors')]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and 'a_file is not a folder' in err and (tmp_path / 'a_file').read_text() == 'mine'


def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, state_dict, capsys, monkeypatch):
    import safetensors.torch
    from lksmn_arch.cli import export as export_cli
    model = tmp_path / 'm.pth'
    torch.save({'params': state_dict}, model)

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b'partial')
        raise safetensors.SafetensorError('Error while serializing: IoError(No space left on device)')

    monkeypatch.setattr(safetensors.torch, 'save_file', full_disk)
    assert export_cli.main(['-m', str(model), '--safetensors', str(tmp_path / 'm.safetensors')]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and 'No space left on device' in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m.pth']


def test_a_fake_onnx_file_is_one_line_from_openvino_too(tmp_path, photo, capfd):
    fake = tmp_path / 'fake.onnx'
    fake.write_bytes(b'this is not an onnx file at all')
    status = upscale_cli.main(['-i', str(photo), '-o', str(tmp_path / 'out'), '-m', str(fake), '--backend',
                               'openvino', '--quiet'])
    err = capfd.readouterr().err  # file-descriptor level: OpenVINO's own C++ output would show here
    assert status == 2 and _one_line(err) and 'not a valid ONNX file' in err
