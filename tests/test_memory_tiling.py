"""--tile auto: whole images when they fit, tiles sized to the memory otherwise, and --tile 0 refused before the
kernel would kill it (issue 24)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import lksmn_arch  # noqa: F401
from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.cli import upscale as upscale_cli
from lksmn_arch.inference import memory
from lksmn_arch.inference.upscaler import Upscaler, _axis_tiles

GiB = 2 ** 30


@pytest.fixture
def free(monkeypatch):
    """Pretend this much memory is free (bytes), whatever the machine has."""
    amount = {'bytes': 16 * GiB}
    monkeypatch.setattr(memory, 'available_memory', lambda device_type='cpu': amount['bytes'])
    return amount


def test_a_small_image_runs_whole_and_a_large_one_in_tiles_that_fit_the_default_budget(free):
    assert memory.choose_tile(480, 640, 4, tile_pad=32, backend='openvino') == 0
    tile = memory.choose_tile(3000, 4000, 4, tile_pad=32, backend='openvino')
    assert memory.MIN_AUTO_TILE <= tile < 3000
    assert memory.pass_bytes((tile + 64) ** 2, 'openvino') <= memory.DEFAULT_PASS_BUDGET
    assert memory.pass_bytes((tile + 64 + 16) ** 2, 'openvino') > memory.DEFAULT_PASS_BUDGET  # the largest


def test_a_tight_limit_gives_smaller_tiles_and_one_below_the_output_is_refused(free):
    roomy = memory.choose_tile(1500, 2000, 4, tile_pad=32, max_memory=4 * GiB)
    tight = memory.choose_tile(1500, 2000, 4, tile_pad=32, max_memory=1 * GiB)
    assert 0 < tight < roomy or (roomy == 0 and tight > 0)
    with pytest.raises(memory.InsufficientMemoryError, match='output alone takes'):
        memory.choose_tile(3000, 4000, 4, tile_pad=32, max_memory=2 * GiB)  # its x4 output is 2.7 GiB


def test_little_free_memory_shrinks_the_tiles_below_the_default_budget(free):
    free['bytes'] = 2 * GiB
    tile = memory.choose_tile(1500, 2000, 4, tile_pad=32)
    budget = int(2 * GiB * memory.SAFETY) - memory.output_bytes(1500, 2000, 4)
    assert memory.pass_bytes((tile + 64) ** 2, 'torch') <= budget < memory.DEFAULT_PASS_BUDGET


def test_other_widths_scale_the_cost():
    assert memory.pass_bytes(10 ** 6, num_feat=96) > memory.pass_bytes(10 ** 6, num_feat=48)


@pytest.mark.parametrize('length, tile, pad', [(100, 30, 8), (64, 64, 32), (1500, 672, 32), (7, 3, 2)])
def test_tiles_have_one_shape_and_their_cores_cover_the_axis(length, tile, pad):
    tiles = _axis_tiles(length, tile, pad)
    assert len({read_end - read_start for _, _, read_start, read_end in tiles}) == 1
    assert tiles[0][0] == 0 and tiles[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(tiles, tiles[1:]))
    for core_start, core_end, read_start, read_end in tiles:
        assert 0 <= read_start <= max(0, core_start - pad) and min(length, core_end + pad) <= read_end <= length


def test_auto_tiles_under_a_tiny_budget_stay_close_to_the_whole_image(free, monkeypatch):
    torch.manual_seed(0)
    net = LKSMN(upscale=2, num_feat=12, num_block=1).eval()
    image = np.random.default_rng(0).random((150, 170, 3), dtype=np.float32)
    whole = Upscaler(net, tile=0, progress=False).upscale_image(image)
    monkeypatch.setattr(memory, 'DEFAULT_PASS_BUDGET', memory.pass_bytes((96 + 16) ** 2))
    auto = Upscaler(net, tile='auto', tile_pad=8, progress=False)
    assert 64 <= auto.tile_for(150, 170) < 150
    tiled = auto.upscale_image(image)
    assert tiled.shape == whole.shape and np.abs(tiled - whole).mean() < 0.02


def test_whole_image_that_cannot_fit_is_refused_with_what_it_needs_and_what_is_free(free, tmp_path, capsys):
    free['bytes'] = 64 * 2 ** 20
    torch.manual_seed(0)
    model = tmp_path / 'm.pth'
    torch.save({'params': LKSMN(upscale=2, num_feat=12, num_block=1).state_dict()}, model)
    cv2.imwrite(str(tmp_path / 'big.png'), np.zeros((900, 1200, 3), np.uint8))
    status = upscale_cli.main(['-i', str(tmp_path / 'big.png'), '-o', str(tmp_path / 'out'), '-m', str(model),
                               '--backend', 'torch', '--tile', '0', '--quiet'])
    err = capsys.readouterr().err
    assert status == 1 and '--tile 0: a 1200x900 image needs about' in err and 'GiB is free' in err
    assert not list((tmp_path / 'out').glob('*.png'))


@pytest.mark.parametrize('text, value', [('6G', 6 * GiB), ('512M', 512 * 2 ** 20), ('2.5GiB', int(2.5 * GiB))])
def test_max_memory_reads_sizes(text, value):
    assert memory.parse_memory(text) == value


@pytest.mark.parametrize('text', ['lots', '-1G', 'inf', '10'])
def test_max_memory_that_is_not_a_size_is_one_line(tmp_path, capsys, text):
    (tmp_path / 'a.png').write_bytes(cv2.imencode('.png', np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    assert upscale_cli.main(['-i', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'out'), f'--max-memory={text}']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '--max-memory' in err


def test_the_memory_model_file_ships_with_every_cpu_backend_measured():
    rows = {(r['backend'], r['precision']) for r in __import__('json').loads(memory.MODEL_FILE.read_text())['rows']}
    assert ('torch', 'fp32') in rows and ('openvino', 'fp32') in rows
    assert Path(memory.MODEL_FILE).name == 'memory_model.json'
