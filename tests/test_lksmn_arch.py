"""The LKSMN network: shapes, parameter budget, registry, save/reload, gradients, bad input."""
import subprocess
import sys

import pytest
import torch
import yaml

import lksmn_arch  # noqa: F401
from lksmn_arch.archs.lksmn_arch import LKCD, LKSMN, MDTA, MLFA, MSMA, GatedFeedForward, PixelShuffleUpsampler

PAPER_X4_PARAMETERS = 253_000


@pytest.fixture(scope='module')
def small_models():
    torch.manual_seed(0)
    return {scale: LKSMN(upscale=scale, num_feat=24, num_block=2).eval() for scale in (2, 3, 4)}


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('batch, height, width', [(1, 1, 1), (2, 1, 7), (1, 5, 3), (3, 17, 9), (1, 32, 32)])
def test_output_is_exactly_upscale_times_input(small_models, scale, batch, height, width):
    with torch.no_grad():
        out = small_models[scale](torch.rand(batch, 3, height, width))
    assert out.shape == (batch, 3, height * scale, width * scale)
    assert torch.isfinite(out).all()


def test_default_x4_parameter_count_is_within_one_percent_of_paper():
    count = sum(p.numel() for p in LKSMN(upscale=4).parameters())
    print(f'LKSMN x4 default parameters: {count:,} (paper: {PAPER_X4_PARAMETERS:,})')
    assert abs(count - PAPER_X4_PARAMETERS) / PAPER_X4_PARAMETERS < 0.01


def test_network_contains_every_named_part_of_the_paper():
    model = LKSMN()
    kinds = {type(m) for m in model.modules()}
    assert {LKCD, MSMA, MDTA, GatedFeedForward, MLFA, PixelShuffleUpsampler} <= kinds
    # LKCD: depthwise local, depthwise dilated, pointwise, as VAN decomposes a large kernel
    lkcd = model.blocks[0].msma.lkcd[1]
    assert lkcd.local.groups == lkcd.local.in_channels and lkcd.local.kernel_size == (5, 5)
    assert lkcd.dilated.groups == lkcd.dilated.in_channels and lkcd.dilated.dilation == (3, 3)
    assert lkcd.dilated.kernel_size == (7, 7) and lkcd.pointwise.kernel_size == (1, 1)


def test_builds_through_basicsr_registry_from_yaml():
    from basicsr.archs import build_network
    opt = yaml.safe_load("""
network_g:
  type: LKSMN
  upscale: 3
  num_feat: 24
  num_block: 2
  lkcd_kernels: [[9, 2], [21, 3]]
  num_heads: 2
""")
    net = build_network(opt['network_g'])
    assert isinstance(net, LKSMN)
    assert net(torch.rand(1, 3, 6, 5)).shape == (1, 3, 18, 15)


def test_default_build_network_call_from_the_readme():
    from basicsr.archs import build_network
    assert isinstance(build_network({'type': 'LKSMN', 'upscale': 4}), LKSMN)


def test_reimport_and_reload_do_not_raise_already_registered():
    """In a fresh interpreter, so that the reloaded classes do not leak into other tests."""
    code = (
        'import importlib, lksmn_arch, basicsr.archs\n'
        'from lksmn_arch.archs import lksmn_arch as arch\n'
        'importlib.import_module("lksmn_arch")\n'
        'importlib.reload(arch)\n'
        'importlib.reload(lksmn_arch.archs)\n'
        'from basicsr.utils.registry import ARCH_REGISTRY\n'
        'assert ARCH_REGISTRY.get("LKSMN") is arch.LKSMN\n'
        'print(type(basicsr.archs.build_network({"type": "LKSMN", "upscale": 2})).__name__)\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == 'LKSMN'


def test_a_different_class_under_the_same_name_is_still_refused():
    from basicsr.utils.registry import ARCH_REGISTRY

    class LKSMN(torch.nn.Module):  # noqa: N801 - deliberately the same name
        pass

    with pytest.raises(AssertionError, match='already registered'):
        ARCH_REGISTRY.register(LKSMN)


def test_state_dict_round_trip_gives_identical_output(tmp_path):
    torch.manual_seed(1)
    model = LKSMN(upscale=2, num_feat=24, num_block=2).eval()
    path = tmp_path / 'net.pth'
    torch.save({'params': model.state_dict()}, path)
    reloaded = LKSMN(upscale=2, num_feat=24, num_block=2).eval()
    reloaded.load_state_dict(torch.load(path, weights_only=True)['params'])
    x = torch.rand(2, 3, 11, 13)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(2)
    model = LKSMN(upscale=4, num_feat=24, num_block=2)
    model(torch.rand(2, 3, 12, 10)).abs().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize('upscale', [1, 5, '4', 4.0, True, None])
def test_wrong_upscale_is_a_value_error_naming_the_argument(upscale):
    with pytest.raises(ValueError, match=r'upscale must be one of \[2, 3, 4\]'):
        LKSMN(upscale=upscale)


@pytest.mark.parametrize('kwargs, key', [
    ({'num_feat': 50}, 'num_feat'),
    ({'num_heads': 0}, 'num_heads'),
    ({'lkcd_kernels': [[9]]}, 'lkcd_kernels'),
    ({'lkcd_kernels': []}, 'lkcd_kernels'),
    ({'ffn_expansion': 0}, 'ffn_expansion'),
])
def test_bad_hyperparameters_are_value_errors_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        LKSMN(**kwargs)


def test_hyperparameters_are_keyword_only():
    with pytest.raises(TypeError):
        LKSMN(4)


@pytest.mark.parametrize('shape', [(3, 8, 8), (1, 1, 3, 8, 8), (1, 4, 8, 8), (1, 1, 8, 8)])
def test_bad_input_shape_is_a_value_error_naming_the_expected_shape(small_models, shape):
    with pytest.raises(ValueError, match=r'input x must be a 4D \(batch, 3, height, width\)'):
        small_models[4](torch.rand(shape))


def test_layer_norm_gives_the_same_result_eager_and_under_compilation(monkeypatch):
    from lksmn_arch.archs.lksmn_arch import LayerNorm2d
    torch.manual_seed(3)
    norm = LayerNorm2d(8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 8, 5, 7) * 3 + 1
    eager = norm(x)
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    compiled_branch = norm(x)
    reference = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), norm.weight, norm.bias, 1e-6)
    assert torch.allclose(eager, compiled_branch, atol=1e-5)
    assert torch.allclose(eager, reference.permute(0, 3, 1, 2), atol=1e-6)
