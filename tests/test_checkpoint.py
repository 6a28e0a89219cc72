"""Checkpoints: safe loading, hyperparameters read back from shapes, clear refusals."""
import pytest
import torch

import lksmn_arch  # noqa: F401  (compat fixes, registry)
from lksmn_arch.archs.lksmn_arch import LKSMN, NAMED_CONFIGS
from lksmn_arch.utils.checkpoint import (CheckpointError, build_model_from_checkpoint, infer_lksmn_config,
                                   load_state_dict)

SMALL = dict(num_feat=24, num_block=2)
DEFAULTS = dict(upscale=4, num_in_ch=3, num_out_ch=3, **NAMED_CONFIGS['v2'])


class RunsCodeWhenUnpickled:
    """Unpickling this object would create ``marker`` (stands for arbitrary code in a malicious file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, scale: int) -> None:
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    assert out_a.shape == (1, 3, 9 * scale, 11 * scale)
    assert torch.equal(out_a, out_b)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_scale_and_config_read_back_from_basicsr_checkpoint_rebuild_identical_model(tmp_path, scale):
    torch.manual_seed(scale)
    original = LKSMN(upscale=scale, **SMALL).eval()
    path = tmp_path / f'net_x{scale}.pth'
    torch.save({'params': original.state_dict()}, path)

    model, config = build_model_from_checkpoint(path)

    assert config == {'upscale': scale, 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 24, 'num_block': 2,
                      'lkcd_kernels': ((9, 3), (15, 3), (21, 3)), 'num_heads': 4, 'ffn_expansion': 1.95,
                      'norm': 'batchnorm', 'ffn': 'conv_mixer', 'mdta': True, 'mlfa': True}
    assert not model.training
    _same_outputs(original, model, scale)


@pytest.mark.parametrize('kwargs', [
    dict(upscale=3, num_feat=30, num_block=3, lkcd_kernels=((13, 3), (25, 5)), num_heads=3, ffn_expansion=1.7),
    dict(upscale=2, num_feat=16, num_block=1, lkcd_kernels=((7, 2), (3, 1), (40, 6), (11, 4)), num_heads=2,
         ffn_expansion=2.66),
    dict(upscale=4, num_in_ch=1, num_out_ch=1, num_feat=12, num_block=2, num_heads=1, ffn_expansion=0.5),
    dict(upscale=4, num_feat=24, num_block=2, norm='batchnorm', ffn='conv_mixer', ffn_expansion=1.25),
    dict(upscale=2, num_feat=18, num_block=3, norm='none', ffn='none', mdta=False, mlfa=False,
         lkcd_kernels=((21, 3),)),
    dict(upscale=3, num_feat=30, num_block=2, mdta=False, ffn='conv_mixer', ffn_expansion=0.66),
])
def test_non_default_hyperparameters_are_inferred_well_enough_to_rebuild_the_same_network(tmp_path, kwargs):
    torch.manual_seed(0)
    original = LKSMN(**kwargs).eval()
    path = tmp_path / 'bare.pth'
    torch.save(original.state_dict(), path)  # a bare state dict, no 'params'

    model, config = build_model_from_checkpoint(path)

    expected = {**DEFAULTS, **kwargs}
    for key in ('upscale', 'num_in_ch', 'num_out_ch', 'num_feat', 'num_block', 'num_heads', 'norm', 'ffn', 'mdta',
                'mlfa'):
        assert config[key] == expected[key], key
    assert len(config['lkcd_kernels']) == len(expected['lkcd_kernels'])
    shapes = {k: v.shape for k, v in original.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    x = torch.rand(2, kwargs.get('num_in_ch', 3), 7, 10)
    with torch.no_grad():
        assert torch.equal(original(x), model(x))


def test_named_configuration_kernels_are_preferred_when_the_shapes_fit():
    # (7, 2) and (9, 2) build the same LKCD; v1's (9, 2) is reported
    model = LKSMN(num_feat=24, num_block=1, lkcd_kernels=((7, 2), (19, 3), (36, 4)))
    assert infer_lksmn_config(model.state_dict())['lkcd_kernels'] == ((9, 2), (21, 3), (33, 4))


@pytest.mark.parametrize('name', ['v1', 'v2'])
def test_checkpoint_of_each_named_default_rebuilds_exactly_that_configuration(tmp_path, name):
    torch.manual_seed(7)
    original = LKSMN(upscale=4, **NAMED_CONFIGS[name]).eval()
    path = tmp_path / f'{name}.pth'
    torch.save({'params': original.state_dict(), 'params_ema': original.state_dict()}, path)
    model, config = build_model_from_checkpoint(path)
    assert config == {'upscale': 4, 'num_in_ch': 3, 'num_out_ch': 3, **NAMED_CONFIGS[name]}
    _same_outputs(original, model, 4)


def test_params_ema_is_preferred_over_params(tmp_path):
    torch.manual_seed(0)
    plain, ema = LKSMN(**SMALL), LKSMN(**SMALL)
    path = tmp_path / 'ema.pth'
    torch.save({'params': plain.state_dict(), 'params_ema': ema.state_dict()}, path)
    loaded = load_state_dict(path)
    assert torch.equal(loaded['conv_first.weight'], ema.state_dict()['conv_first.weight'])
    assert not torch.equal(loaded['conv_first.weight'], plain.state_dict()['conv_first.weight'])


def test_dataparallel_module_prefix_is_removed(tmp_path):
    model = LKSMN(**SMALL)
    path = tmp_path / 'dp.pth'
    torch.save({'params': {f'module.{k}': v for k, v in model.state_dict().items()}}, path)
    rebuilt, _ = build_model_from_checkpoint(path)
    _same_outputs(model.eval(), rebuilt, 4)


def test_checkpoint_of_another_architecture_is_refused_naming_missing_keys(tmp_path):
    from basicsr.archs.edsr_arch import EDSR
    path = tmp_path / 'edsr_x2.pth'
    torch.save({'params': EDSR(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=2, upscale=2).state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        build_model_from_checkpoint(path)
    message = str(info.value)
    assert 'not an LKSMN checkpoint' in message and str(path) in message
    assert 'blocks.0.msma.attention_in.weight' in message and 'upsampler.0.weight' in message
    assert 'conv_first.weight' not in message.split('missing keys')[1]  # EDSR has that one


def test_state_dict_without_any_lksmn_key_is_a_value_error():
    with pytest.raises(ValueError, match='not an LKSMN checkpoint: missing keys conv_first.weight'):
        infer_lksmn_config({'weight': torch.zeros(3)})


def test_checkpoint_needing_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'pickled.pth'
    torch.save({'params': LKSMN(**SMALL).state_dict(), 'extra': RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert str(path) in message
    assert 'weights_only' in message and 'pickled Python code' in message and 'not a plain tensor checkpoint' in message
    assert 'open' in message  # names what it would have run
    assert not marker.exists()


def test_pickled_whole_module_is_refused(tmp_path):
    path = tmp_path / 'module.pth'
    torch.save(LKSMN(**SMALL), path)
    with pytest.raises(CheckpointError, match='LKSMN'):
        build_model_from_checkpoint(path)


def test_missing_checkpoint_error_names_the_file(tmp_path):
    path = tmp_path / 'nope.pth'
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        build_model_from_checkpoint(path)


@pytest.mark.parametrize('content', [b'', b'this is not a checkpoint', 'truncated'])
def test_corrupt_checkpoint_error_names_the_file(tmp_path, content):
    path = tmp_path / 'broken.pth'
    if content == 'truncated':
        torch.save({'params': LKSMN(**SMALL).state_dict()}, path)
        content = path.read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match='broken.pth.*(corrupt|not a valid)'):
        load_state_dict(path)


def test_file_without_a_state_dict_is_refused(tmp_path):
    path = tmp_path / 'meta.pth'
    torch.save({'epoch': 3, 'iter': 1000}, path)
    with pytest.raises(CheckpointError, match="meta.pth holds no state dict.*'epoch'"):
        load_state_dict(path)


def test_mismatching_tensor_shape_is_reported_with_the_file(tmp_path):
    state = LKSMN(**SMALL).state_dict()
    state['blocks.1.ffn.spatial.weight'] = torch.zeros(7, 24, 3, 3)
    path = tmp_path / 'tampered.pth'
    torch.save({'params': state}, path)
    with pytest.raises(CheckpointError, match='(?s)tampered.pth.*size mismatch for blocks.1.ffn.spatial.weight'):
        build_model_from_checkpoint(path)
