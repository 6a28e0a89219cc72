"""Upscaler: whole-image and tiled inference, blending, TTA, precision, image layouts."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn

import lksmn_arch  # noqa: F401
from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.inference.upscaler import Upscaler, _dihedral, _dihedral_inverse, psnr

# Measured with this file's model and photo (seed 0, x2, 40x48 astronaut): tile 16 / pad 8 gives 64.2 dB against
# whole-image output, tile 16 / pad 0 gives 30.0 dB (seeds 0-2, x2 and x3: 58.6-64.2 dB and 25.9-30.2 dB).
TILED_PSNR_BOUND = 60.0
CONTEXT_GAIN_BOUND = 20.0


class Nearest(nn.Module):
    """A local, flip/rotation-equivariant x2 'network': nearest-neighbour upsampling."""

    upscale = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode='nearest')


class Recorder(nn.Module):
    """Wraps a network and records the shape of every input it is given."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.upscale = inner.upscale
        self.shapes = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.inner(x)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return LKSMN(upscale=2, num_feat=24, num_block=2).eval()


@pytest.fixture(scope='module')
def photo():
    return cv2.resize(data.astronaut(), (40, 48), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def test_whole_image_inference_is_the_network_output_and_leaves_the_network_in_training_form(model):
    x = torch.rand(2, 3, 13, 17)
    with torch.no_grad():
        expected = model(x)
    default = Upscaler(model, device='cpu').upscale_tensor(x)  # fused, channels_last: equal to float rounding
    assert float((default - expected).abs().max()) < 1e-5
    plain = Upscaler(model, device='cpu', fuse=False, channels_last=False).upscale_tensor(x)
    assert torch.equal(plain, expected)
    assert not model.fused and model.blocks[0].msma.local is None


@pytest.mark.parametrize('tile', [17, 18, 64])
def test_tile_at_least_as_large_as_the_image_gives_identical_output(model, tile):
    x = torch.rand(1, 3, 13, 17)
    whole = Upscaler(model, device='cpu').upscale_tensor(x)
    tiled = Upscaler(model, tile=tile, tile_pad=4, device='cpu').upscale_tensor(x)
    assert torch.equal(tiled, whole)


def test_image_smaller_than_a_tile_in_one_dimension_is_tiled_along_the_other(model):
    recorder = Recorder(model)
    out = Upscaler(recorder, tile=16, tile_pad=4, device='cpu', progress=False).upscale_tensor(torch.rand(3, 5, 40))
    assert out.shape == (3, 10, 80)
    assert len(recorder.shapes) == 3 and all(shape[2] == 5 for shape in recorder.shapes)


def test_overlapping_tiles_are_close_to_whole_image_output_on_a_photo(model, photo):
    whole = Upscaler(model, device='cpu').upscale_image(photo)
    with_context = Upscaler(model, tile=16, tile_pad=8, device='cpu', progress=False).upscale_image(photo)
    no_context = Upscaler(model, tile=16, tile_pad=0, device='cpu', progress=False).upscale_image(photo)
    close, seams = psnr(with_context, whole), psnr(no_context, whole)
    print(f'tiled vs whole-image PSNR: tile 16 pad 8 {close:.2f} dB, pad 0 {seams:.2f} dB')
    assert with_context.shape == whole.shape == (96, 80, 3)
    assert TILED_PSNR_BOUND < close < float('inf')  # close, but MDTA makes it not identical
    assert close - seams > CONTEXT_GAIN_BOUND


def test_exact_tiles_reproduce_the_whole_image_where_blended_tiles_do_not(model):
    x = torch.rand(1, 3, 100, 90)
    whole = Upscaler(model, device='cpu').upscale_tensor(x)
    exact = Upscaler(model, tile=24, exact_tiles=True, device='cpu', progress=False)
    shapes = []
    exact.model.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].shape)))
    out = exact.upscale_tensor(x)
    blended = Upscaler(model, tile=24, device='cpu', progress=False).upscale_tensor(x)
    assert exact.tile_pad == model.receptive_radius == 29
    assert len(shapes) == 3 * 5 * 4 and max(shape[3] for shape in shapes) < 90  # 5x4 tiles, 2 MDTA passes + 1
    assert float((out - whole).abs().max()) < 1e-5
    assert float((blended - whole).abs().max()) > 1e-4  # 3e-4 with these weights; the shipped x4: 0.08 on a photo


def test_exact_tiles_run_in_bf16_and_match_the_whole_image_to_bf16_rounding(model):
    x = torch.rand(1, 3, 70, 64)
    whole = Upscaler(model, precision='bf16', device='cpu').upscale_tensor(x)
    exact = Upscaler(model, tile=20, exact_tiles=True, precision='bf16', device='cpu', progress=False).upscale_tensor(x)
    assert float((exact - whole).abs().max()) <= 2 ** -7  # two steps of bf16's 8-bit mantissa near 1


def test_exact_tiles_with_tta_reproduce_whole_image_tta(model):
    x = torch.rand(1, 3, 70, 64)
    whole = Upscaler(model, tta=True, device='cpu').upscale_tensor(x)
    exact = Upscaler(model, tile=20, exact_tiles=True, tta=True, device='cpu', progress=False).upscale_tensor(x)
    assert float((exact - whole).abs().max()) < 1e-5


def test_receptive_radius_is_exactly_how_far_an_input_pixel_reaches():
    """Without MDTA the network is purely convolutional: a changed input pixel changes the output up to
    receptive_radius LR pixels away and not one pixel further (what exact tiles rely on)."""
    torch.manual_seed(0)
    network = LKSMN(upscale=2, num_feat=24, num_block=2, mdta=False).double().eval()
    radius = network.receptive_radius
    x = torch.rand(1, 3, 2 * radius + 9, 2 * radius + 9, dtype=torch.float64)
    centre = radius + 4
    changed = x.clone()
    changed[..., centre, centre] += 1.0
    with torch.no_grad():
        reach = (network(changed) - network(x)).abs().amax(dim=(0, 1, 3))  # per output row
    rows = torch.nonzero(reach > 0).flatten() // 2  # LR rows that changed
    assert int(rows.min()) == centre - radius and int(rows.max()) == centre + radius


def test_exact_tiles_are_refused_for_a_network_without_their_hooks():
    with pytest.raises(ValueError, match='exact tiles need a PyTorch LKSMN'):
        Upscaler(Nearest(), tile=128, exact_tiles=True)
    with pytest.raises(ValueError, match='without compile'):
        Upscaler(LKSMN(upscale=2, num_feat=12, num_block=1, lkcd_kernels=[[9, 2], [21, 3]], num_heads=2),
                 tile=128, exact_tiles=True, compile=True)


@pytest.mark.parametrize('size, tile, pad', [((37, 29), 10, 3), ((37, 29), 8, 11), ((20, 9), 7, 0), ((16, 16), 5, 2)])
def test_blending_weights_sum_to_one_so_a_local_network_is_reproduced(size, tile, pad):
    x = torch.rand(2, 3, *size)
    whole = Upscaler(Nearest(), device='cpu').upscale_tensor(x)
    tiled = Upscaler(Nearest(), tile=tile, tile_pad=pad, device='cpu', progress=False).upscale_tensor(x)
    assert torch.allclose(tiled, whole, atol=1e-6, rtol=0)


def test_network_never_sees_more_than_tile_plus_padding(model):
    recorder = Recorder(model)
    Upscaler(recorder, tile=20, tile_pad=6, device='cpu', progress=False).upscale_tensor(torch.rand(1, 3, 70, 45))
    assert len(recorder.shapes) == 4 * 3
    assert max(shape[2] for shape in recorder.shapes) <= 20 + 2 * 6
    assert max(shape[3] for shape in recorder.shapes) <= 20 + 2 * 6


def test_tile_progress_bar_shows_and_can_be_disabled(model, capsys):
    x = torch.rand(1, 3, 12, 12)
    Upscaler(Nearest(), tile=4, tile_pad=1, progress=True).upscale_tensor(x)
    assert 'tiles' in capsys.readouterr().err
    Upscaler(Nearest(), tile=4, tile_pad=1, progress=False).upscale_tensor(x)
    assert capsys.readouterr().err == ''


def test_the_eight_tta_transforms_are_distinct_and_inverted():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    transformed = [_dihedral(x, i) for i in range(8)]
    assert len({(tuple(t.shape), tuple(t.flatten().tolist())) for t in transformed}) == 8
    for i, t in enumerate(transformed):
        assert torch.equal(_dihedral_inverse(t, i), x)


def test_tta_runs_eight_passes_and_keeps_an_equivariant_network_unchanged():
    recorder = Recorder(Nearest())
    x = torch.rand(1, 3, 5, 9)
    out = Upscaler(recorder, tta=True).upscale_tensor(x)
    assert len(recorder.shapes) == 8 and {s[2:] for s in recorder.shapes} == {(5, 9), (9, 5)}
    assert torch.allclose(out, Nearest()(x), atol=1e-6, rtol=0)


def test_tta_output_of_lksmn_has_the_output_shape_and_differs_from_a_single_pass(model, photo):
    single = Upscaler(model, device='cpu').upscale_image(photo[:12, :10])
    ensemble = Upscaler(model, device='cpu', tta=True).upscale_image(photo[:12, :10])
    assert ensemble.shape == single.shape == (24, 20, 3)
    assert not np.array_equal(ensemble, single) and psnr(ensemble, single) > 20


def test_fp16_on_cpu_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device.*bf16"):
        Upscaler(LKSMN(num_feat=24, num_block=1), device='cpu', precision='fp16')


def test_bf16_runs_in_bf16_on_cpu_and_stays_close_to_fp32(photo):
    torch.manual_seed(0)
    fp32_model = LKSMN(upscale=2, num_feat=24, num_block=2).eval()
    bf16_model = LKSMN(upscale=2, num_feat=24, num_block=2).eval()
    bf16_model.load_state_dict(fp32_model.state_dict())
    upscaler = Upscaler(bf16_model, device='cpu', precision='bf16')
    assert upscaler.model.conv_first.weight.dtype == torch.bfloat16
    reduced = upscaler.upscale_image(photo)
    full = Upscaler(fp32_model, device='cpu').upscale_image(photo)
    assert reduced.dtype == np.float32 and not np.array_equal(reduced, full)
    assert psnr(reduced, full) > 45  # measured 67.7 dB


def test_image_layouts_keep_their_channels(model):
    upscaler = Upscaler(model, device='cpu')
    rng = np.random.default_rng(0)
    assert upscaler.upscale_image(rng.random((6, 7), dtype=np.float32)).shape == (12, 14)
    assert upscaler.upscale_image(rng.random((6, 7, 1), dtype=np.float32)).shape == (12, 14, 1)
    rgba = rng.random((6, 7, 4), dtype=np.float32)
    rgba[..., 3] = 1.0
    for alpha in ('network', 'bicubic'):
        out = upscaler.upscale_image(rgba, alpha=alpha)
        assert out.shape == (12, 14, 4) and out.min() >= 0 and out.max() <= 1
    assert np.array_equal(upscaler.upscale_image(rgba, alpha='bicubic')[..., 3], np.ones((12, 14), np.float32))
    with pytest.raises(ValueError, match='HxWx4'):
        upscaler.upscale_image(np.zeros((6, 7, 2), np.float32))


@pytest.mark.parametrize('kwargs, message', [
    (dict(tile=-1), 'tile must be'), (dict(tile_pad=2.5), 'tile-pad must be'), (dict(precision='int8'), 'precision'),
])
def test_bad_options_are_refused_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Upscaler(Nearest(), **kwargs)


def test_compiled_upscaler_gives_the_network_output_to_float_rounding():
    torch.manual_seed(4)
    small = LKSMN(upscale=2, num_feat=12, num_block=1, num_heads=2).eval()
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        expected = small(x)
    compiled = Upscaler(small, device='cpu', compile=True, progress=False)
    assert float((compiled.upscale_tensor(x) - expected).abs().max()) < 1e-4


def test_compile_is_refused_for_an_onnx_runtime_network():
    with pytest.raises(ValueError, match='compile are for PyTorch networks'):
        Upscaler(lambda x: x, scale=2, compile=True)
