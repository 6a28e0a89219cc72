"""LKSMN's inference form (fuse_for_inference): the same function as the training form, for every variant."""
import copy

import pytest
import torch

import lksmn_arch  # noqa: F401
from lksmn_arch.archs.lksmn_arch import LKSMN, MDTA, LayerNorm2d

VARIANTS = {
    'default': {},
    'batchnorm': {'norm': 'batchnorm'},
    'no_norm': {'norm': 'none'},
    'conv_mixer': {'ffn': 'conv_mixer', 'ffn_expansion': 1.0},
    'conv_mixer_batchnorm': {'ffn': 'conv_mixer', 'norm': 'batchnorm'},
    'no_ffn_no_mdta_no_mlfa': {'ffn': 'none', 'mdta': False, 'mlfa': False},
    'single_lkcd': {'lkcd_kernels': ((21, 3),)},
    'shared_dilation': {'lkcd_kernels': ((9, 3), (15, 3), (21, 3)), 'norm': 'batchnorm'},
}


def _randomise_norms(model: torch.nn.Module) -> None:
    """Non-trivial norm affines and BatchNorm statistics, so that folding them is really tested."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (LayerNorm2d, torch.nn.BatchNorm2d)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_fused_network_matches_the_training_form_on_odd_sizes(variant, scale):
    torch.manual_seed(scale)
    model = LKSMN(upscale=scale, num_feat=24, num_block=2, **VARIANTS[variant]).eval()
    _randomise_norms(model)
    fused = copy.deepcopy(model).fuse_for_inference()
    for shape in [(1, 3, 7, 13), (2, 3, 17, 9)]:
        x = torch.rand(shape)
        with torch.no_grad():
            expected, got = model(x), fused(x)
            got_channels_last = copy.deepcopy(fused).to(memory_format=torch.channels_last)(
                x.contiguous(memory_format=torch.channels_last))
        assert got.shape == expected.shape == (shape[0], 3, shape[2] * scale, shape[3] * scale)
        assert float((got - expected).abs().max()) < 1e-5
        assert float((got_channels_last - expected).abs().max()) < 1e-5


def test_fusing_removes_the_norm_affines_merges_group_convs_and_splits_qkv():
    block = LKSMN(num_feat=24, num_block=1, norm='layernorm').fuse_for_inference().blocks[0]
    assert block.norm_spatial.weight is None and block.norm_channel.weight is None
    assert block.msma.pointwise.groups == 3 and not hasattr(block.mdta, 'qkv')
    assert [branch[0].out_channels for branch in (block.mdta.query, block.mdta.key, block.mdta.value)] == [24] * 3
    # the default: BatchNorm folds away before 1x1 convs; the groups share dilation 3, so all depthwise convs merge
    block = LKSMN(num_feat=24, num_block=1).fuse_for_inference().blocks[0]
    assert isinstance(block.norm_spatial, torch.nn.Identity) and isinstance(block.norm_channel, torch.nn.Identity)
    assert block.msma.local.in_channels == 24 and block.msma.dilated.in_channels == 24
    assert block.msma.local.kernel_size == (5, 5) and block.msma.dilated.kernel_size == (7, 7)
    # groups with different dilations keep their own dilated convs
    block = LKSMN(num_feat=24, num_block=1, lkcd_kernels=((9, 2), (21, 3), (33, 4))).fuse_for_inference().blocks[0]
    assert block.msma.dilated is None and block.msma.local.kernel_size == (7, 7)


def test_fused_network_refuses_training_and_fusing_twice_is_harmless():
    model = LKSMN(num_feat=24, num_block=1).fuse_for_inference()
    assert model.fuse_for_inference() is model and not model.training
    with pytest.raises(RuntimeError, match='fused for inference'):
        model.train()


def test_fused_mdta_in_float16_normalises_before_the_product_so_large_activations_do_not_overflow():
    torch.manual_seed(0)
    mdta = MDTA(48, 4).eval()
    x = torch.randn(1, 48, 64, 64) * 30  # q^T k over 4096 pixels exceeds float16's 65504
    with torch.no_grad():
        expected = mdta.double()(x.double())
        fused = copy.deepcopy(mdta).float()
        fused.fuse(None)
        assert float((fused(x) - expected).abs().max()) < 1e-4
        half = fused.half()(x.half())
    assert torch.isfinite(half).all()
    assert float((half.double() - expected).abs().max()) < 0.05
