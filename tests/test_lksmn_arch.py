"""The LKSMN network: shapes, parameter budget, registry, save/reload, gradients, bad input."""
import subprocess
import sys

import pytest
import torch
import yaml

import lksmn_arch  # noqa: F401
from lksmn_arch.archs.lksmn_arch import (LKCD, LKSMN, MDTA, MLFA, MSMA, NAMED_CONFIGS, ConvChannelMixer,
                                         GatedFeedForward, LayerNorm2d, PixelShuffleUpsampler,
                                         set_lkcd_depthwise_fp32)

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


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('config', [{}, NAMED_CONFIGS['v1'], NAMED_CONFIGS['v2']], ids=['default', 'v1', 'v2'])
def test_default_and_named_x4_parameter_counts_are_within_one_percent_of_paper(config):
    count = _trainable(LKSMN(upscale=4, **config))
    print(f'LKSMN x4 {config or "default"} parameters: {count:,} (paper: {PAPER_X4_PARAMETERS:,})')
    assert abs(count - PAPER_X4_PARAMETERS) / PAPER_X4_PARAMETERS < 0.01


def test_default_is_the_named_configuration_v2():
    default, v2 = LKSMN().state_dict(), LKSMN(**NAMED_CONFIGS['v2']).state_dict()
    assert {k: v.shape for k, v in default.items()} == {k: v.shape for k, v in v2.items()}


@pytest.mark.parametrize('config', [{}, NAMED_CONFIGS['v1']], ids=['default', 'v1'])
def test_network_contains_every_named_part_of_the_paper(config):
    model = LKSMN(**config)
    kinds = {type(m) for m in model.modules()}
    assert {LKCD, MSMA, MDTA, MLFA, PixelShuffleUpsampler} <= kinds
    assert GatedFeedForward in kinds or ConvChannelMixer in kinds
    # LKCD: depthwise local, depthwise dilated, pointwise, as VAN decomposes a large kernel; several reaches
    lkcds = model.blocks[0].msma.lkcd
    assert len({lkcd.dilated.kernel_size for lkcd in lkcds}) == len(lkcds) > 1
    lkcd = lkcds[1]
    assert lkcd.local.groups == lkcd.local.in_channels and lkcd.local.kernel_size == (5, 5)
    assert lkcd.dilated.groups == lkcd.dilated.in_channels and lkcd.dilated.dilation == (3, 3)
    assert lkcd.pointwise.kernel_size == (1, 1)


# Every variant the design study trains (options/ablation/): shapes at every scale, and a parameter count that
# only changes where the variant says it does.
VARIANTS = {
    'nomdta': dict(mdta=False), 'single_lkcd': dict(lkcd_kernels=((21, 3),)), 'nomlfa': dict(mlfa=False),
    'gated_dconv': dict(ffn='gated_dconv', ffn_expansion=2.0), 'ffn_none': dict(ffn='none'),
    'layernorm': dict(norm='layernorm'), 'norm_none': dict(norm='none'), 'w36x8': dict(num_feat=36, num_block=8),
    'w42x6': dict(num_feat=42, num_block=6, num_heads=3), 'w60x3': dict(num_feat=60, num_block=3),
}


@pytest.mark.parametrize('base', ['v1', 'v2'])
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_every_study_variant_builds_runs_and_counts_what_it_removes(base, variant):
    config = {**NAMED_CONFIGS[base], **VARIANTS[variant]}
    model = LKSMN(upscale=3, **config).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 5, 7)).shape == (1, 3, 15, 21)
    reference = LKSMN(upscale=3, **NAMED_CONFIGS[base])
    blocks = len(model.blocks)
    if variant == 'nomdta':
        removed = sum(_trainable(b.mdta) + _trainable(b.norm_channel) for b in reference.blocks)
        assert _trainable(reference) - _trainable(model) == removed
    if variant == 'nomlfa':
        assert _trainable(reference) - _trainable(model) == _trainable(reference.mlfa)
    if variant == 'ffn_none':
        removed = sum(_trainable(b.ffn) + _trainable(b.norm_ffn) for b in reference.blocks)
        assert _trainable(reference) - _trainable(model) == removed
    if variant == 'norm_none':
        assert not any(isinstance(m, (torch.nn.BatchNorm2d, LayerNorm2d)) for m in model.modules())
    if variant.startswith('w'):
        assert blocks == config['num_block'] and model.conv_first.out_channels == config['num_feat']


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
    missing = [name for name, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing


def test_lkcd_depthwise_convs_can_run_in_fp32_under_bf16_autocast_with_gradients_for_every_weight():
    torch.manual_seed(3)
    model = LKSMN(upscale=2, num_feat=24, num_block=2)
    weights = set(model.state_dict())
    assert set_lkcd_depthwise_fp32(model, True) == 2 * 3 and set(model.state_dict()) == weights  # not a weight
    seen = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and name.split('.')[-1] in ('local', 'dilated', 'pointwise'):
            module.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, out.dtype))
    x = torch.rand(2, 3, 12, 10)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    out.float().abs().mean().backward()
    assert {d for n, d in seen.items() if not n.endswith('pointwise')} == {torch.float32}
    assert {d for n, d in seen.items() if n.endswith('pointwise')} == {torch.bfloat16}  # back under autocast
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        reference = model(x)  # outside autocast the flag changes nothing
        set_lkcd_depthwise_fp32(model, False)
        assert torch.equal(model(x), reference)
    assert set_lkcd_depthwise_fp32(torch.nn.Conv2d(3, 3, 1), True) == 0


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


def test_batchnorm_statistics_reach_basicsr_ema_and_stay_out_of_the_optimizer():
    """BasicSR's model_ema averages named_parameters() only; LKSMN's BatchNorm statistics must be among them."""
    import copy
    import types

    from basicsr.models.base_model import BaseModel
    torch.manual_seed(5)
    net = LKSMN(upscale=2, num_feat=12, num_block=1, num_heads=2)
    ema = copy.deepcopy(net).eval()
    net.train()
    net(torch.rand(4, 3, 8, 8) * 3 + 1)  # a training step's forward moves the running statistics
    stats = net.blocks[0].norm_spatial.running_mean
    assert not stats.requires_grad and not torch.equal(stats, ema.blocks[0].norm_spatial.running_mean)
    fake = types.SimpleNamespace(net_g=net, net_g_ema=ema, get_bare_model=lambda n: n)
    BaseModel.model_ema(fake, decay=0.5)
    assert torch.allclose(ema.blocks[0].norm_spatial.running_mean, 0.5 * stats)  # EMA of (0 initially, stats)
    assert all(p.requires_grad == ('running_' not in name) for name, p in net.named_parameters())
