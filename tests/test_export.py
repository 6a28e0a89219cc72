"""lksmn-export and the ONNX Runtime backend: dynamic shapes, agreement with PyTorch, the CLI."""
import importlib.util
import os
import stat
import sys

import cv2
import numpy as np
import pytest
import torch

import lksmn_arch  # noqa: F401
from lksmn_arch.cli import export as export_cli
from lksmn_arch.inference import export
from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.inference.export import OnnxModel, OpenVinoModel, create_session
from lksmn_arch.inference.files import onnx_cache_dir, resolve_backend, upscale_paths

SCALE = 3  # odd, so that a wrong output size cannot come out right by accident


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """(checkpoint, onnx file, PyTorch model), exported once through the CLI."""
    folder = tmp_path_factory.mktemp('export')
    torch.manual_seed(0)
    model = LKSMN(upscale=SCALE, num_feat=24, num_block=1, num_heads=2).eval()
    checkpoint = folder / 'lksmn_x3.pth'
    torch.save({'params': model.state_dict()}, checkpoint)
    onnx_path = folder / 'models' / 'lksmn_x3.onnx'
    assert export_cli.main(['-m', str(checkpoint), '--onnx', str(onnx_path)]) == 0
    return checkpoint, onnx_path, model


@pytest.fixture(scope='module')
def onnx_model(exported):
    return OnnxModel(exported[1], device='cpu')


@pytest.mark.parametrize('batch, height, width', [(1, 1, 1), (1, 16, 16), (1, 17, 23), (2, 13, 7), (2, 32, 45),
                                                  (1, 64, 48)])
def test_onnx_runtime_matches_pytorch_at_dynamic_sizes(exported, onnx_model, batch, height, width):
    model = exported[2]
    x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(height * width))
    with torch.no_grad():
        expected = model(x)
    got = onnx_model(x)
    assert got.shape == (batch, 3, height * SCALE, width * SCALE)
    assert float((got - expected).abs().max()) < 1e-4


def test_export_is_atomic_and_records_scale_and_config(exported, onnx_model):
    onnx_path = exported[1]
    assert [p.name for p in onnx_path.parent.iterdir()] == ['lksmn_x3.onnx']  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(onnx_path.stat().st_mode) == 0o666 & ~umask  # not the temp file's private 0600
    assert onnx_model.scale == SCALE
    assert onnx_model.config['num_heads'] == 2 and onnx_model.config['upscale'] == SCALE
    names = [i.name for i in create_session(onnx_path, 'cpu').get_inputs()]
    assert names == ['input']


def test_onnxruntime_backend_upscales_files_like_the_torch_backend(exported, tmp_path):
    checkpoint, onnx_path, _ = exported
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / 'rgb.png'), rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / 'rgba.png'), rng.integers(0, 256, (9, 11, 4), dtype=np.uint8))
    via_torch = upscale_paths(tmp_path, tmp_path / 'torch', checkpoint, backend='torch', tile=6, tile_pad=2,
                              progress=False)
    via_ort = upscale_paths(tmp_path, tmp_path / 'ort', onnx_path, backend='onnxruntime', tile=6, tile_pad=2,
                            device='cpu', progress=False)
    assert via_torch.ok and via_ort.ok and len(via_ort.written) == 2
    for name in ('rgb_x3.png', 'rgba_x3.png'):
        a = cv2.imread(str(tmp_path / 'torch' / name), cv2.IMREAD_UNCHANGED).astype(int)
        b = cv2.imread(str(tmp_path / 'ort' / name), cv2.IMREAD_UNCHANGED).astype(int)
        assert a.shape == b.shape == (27, 33, a.shape[2]) and np.abs(a - b).max() <= 1


def test_onnxruntime_backend_refuses_reduced_precision(exported, tmp_path):
    _, onnx_path, _ = exported
    cv2.imwrite(str(tmp_path / 'x.png'), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match='runs in fp32'):
        upscale_paths(tmp_path / 'x.png', tmp_path / 'out', onnx_path, backend='onnxruntime', precision='bf16')


def test_a_checkpoint_given_as_onnx_model_is_refused_naming_it(exported):
    checkpoint, _, _ = exported
    with pytest.raises(ValueError, match=f'cannot load ONNX model {checkpoint}'):
        OnnxModel(checkpoint, device='cpu')


def test_export_cli_reports_a_bad_checkpoint_with_status_2(tmp_path, capsys):
    (tmp_path / 'bad.pth').write_bytes(b'garbage')
    assert export_cli.main(['-m', str(tmp_path / 'bad.pth'), '--onnx', str(tmp_path / 'x.onnx')]) == 2
    assert 'bad.pth' in capsys.readouterr().err
    assert not (tmp_path / 'x.onnx').exists()


def test_export_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as info:
        export_cli.main(['--help'])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ('--model', '--onnx', '--opset', '--no-verify'))


def _upscaled(folder) -> dict:
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(int) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize('backend, name', [('auto', 'OpenVINO'), ('onnxruntime', 'ONNX Runtime'),
                                           ('openvino', 'OpenVINO')])
def test_runtime_backends_run_a_verified_export_of_the_checkpoint_made_once(exported, tmp_path, monkeypatch,
                                                                              backend, name):
    checkpoint = exported[0]
    monkeypatch.setenv('LKSMN_CACHE_DIR', str(tmp_path / 'cache'))
    cv2.imwrite(str(tmp_path / 'rgb.png'), np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8))
    lines = []
    auto = upscale_paths(tmp_path / 'rgb.png', tmp_path / 'auto', checkpoint, device='cpu', progress=False,
                         log=lines.append, backend=backend)
    torch_ = upscale_paths(tmp_path / 'rgb.png', tmp_path / 'torch', checkpoint, backend='torch', device='cpu',
                           progress=False)
    assert auto.ok and torch_.ok
    assert len(lines) == 2 and lines[0].startswith(f'backend: {name} (') and str(onnx_cache_dir()) in lines[0]
    assert lines[1] == f'model: {checkpoint} (x3)'
    cached = sorted((tmp_path / 'cache').iterdir())  # the export and its recorded hash
    assert [p.name[len(cached[0].name):] for p in cached] == ['', '.sha256']
    assert cached[0].suffix == '.onnx' and cached[0].name.startswith('lksmn_x3-')
    a, b = _upscaled(tmp_path / 'auto'), _upscaled(tmp_path / 'torch')
    assert a.keys() == b.keys() and all(np.abs(a[k] - b[k]).max() <= 1 for k in a)

    def no_second_export(*args, **kwargs):
        raise AssertionError('the cached export was made again')
    monkeypatch.setattr(export, 'export_checkpoint', no_second_export)
    again = upscale_paths(tmp_path / 'rgb.png', tmp_path / 'again', checkpoint, device='cpu', progress=False,
                          backend=backend)
    assert again.ok and sorted((tmp_path / 'cache').iterdir()) == cached


def test_auto_backend_falls_back_to_pytorch_when_the_export_fails(exported, tmp_path, monkeypatch):
    monkeypatch.setenv('LKSMN_CACHE_DIR', str(tmp_path / 'cache'))

    def broken_export(*args, **kwargs):
        raise RuntimeError('ONNX export failed: the exporter broke\nsecond line')
    monkeypatch.setattr(export, 'export_checkpoint', broken_export)
    cv2.imwrite(str(tmp_path / 'x.png'), np.zeros((5, 6, 3), np.uint8))
    lines = []
    report = upscale_paths(tmp_path / 'x.png', tmp_path / 'out', exported[0], device='cpu', progress=False,
                           log=lines.append)
    assert report.ok and lines == ['backend: PyTorch (the ONNX export failed: ONNX export failed: the exporter broke)',
                                   f'model: {exported[0]} (x3)']
    assert not (tmp_path / 'cache').exists() or not list((tmp_path / 'cache').iterdir())


@pytest.mark.parametrize('model, precision, compile, expected', [
    ('net.pth', 'fp32', False, 'openvino'), ('net.onnx', 'fp32', False, 'openvino'),
    ('net.pth', 'bf16', False, 'openvino'), ('net.pth', 'fp32', True, 'torch')])
def test_auto_backend_takes_openvino_on_the_cpu_unless_compile_is_asked_for(model, precision, compile, expected):
    assert resolve_backend(model, 'cpu', precision, compile)[0] == expected


def _not_installed(monkeypatch, *modules):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name in modules else real(name, *a))


def test_auto_backend_falls_back_to_onnxruntime_then_pytorch_when_runtimes_are_missing(monkeypatch):
    _not_installed(monkeypatch, 'openvino')
    assert resolve_backend('net.pth', 'cpu', 'fp32', False)[0] == 'onnxruntime'
    backend, reason = resolve_backend('net.pth', 'cpu', 'bf16', False)
    assert backend == 'torch' and 'bf16 without OpenVINO' in reason
    _not_installed(monkeypatch, 'openvino', 'onnxruntime')
    backend, reason = resolve_backend('net.pth', 'cpu', 'fp32', False)
    assert backend == 'torch' and 'neither OpenVINO nor ONNX Runtime is installed' in reason


def test_openvino_model_matches_pytorch_at_several_sizes_and_runs_bf16(exported):
    _, onnx_path, model = exported
    fp32, bf16 = OpenVinoModel(onnx_path, cache_size=3), OpenVinoModel(onnx_path, precision='bf16')
    assert fp32.scale == SCALE and fp32.config['num_heads'] == 2 and bf16.precision == 'bf16'
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 17, 23), (2, 3, 9, 5), (1, 3, 1, 1), (1, 3, 17, 23)]:
        x = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected = model(x)
        assert float((fp32(x) - expected).abs().max()) < 1e-4
        assert float((bf16(x) - expected).abs().max()) < 0.05
    assert len(fp32._requests) == 3  # one compilation per shape
    assert len(bf16._requests) == 2  # the default bound: two shapes kept (each holds a pass's working memory)


def test_openvino_outputs_are_the_callers_own_tensors_not_views_of_a_reused_buffer(exported):
    _, onnx_path, model = exported
    runtime = OpenVinoModel(onnx_path)
    first_input, second_input = torch.rand(1, 3, 12, 10), torch.rand(1, 3, 12, 10)
    first = runtime(first_input)
    kept = first.clone()
    second = runtime(second_input)  # same shape: the same infer request writes its output again
    assert torch.equal(first, kept) and not torch.equal(first, second)
    with torch.no_grad():
        assert float((second - model(second_input)).abs().max()) < 1e-4


def test_upscaler_refuses_a_precision_the_runtime_does_not_run(exported):
    from lksmn_arch.inference.upscaler import Upscaler
    with pytest.raises(ValueError, match='runs in bf16'):
        Upscaler(OpenVinoModel(exported[1], precision='bf16'), precision='fp32')
