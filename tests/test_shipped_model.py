"""The models shipped in the package (x2, x3, x4): listed with their checksums and provenance, the defaults of
lksmn-upscale, Upscaler and option files (shipped:x<s>), refused when damaged; their card's figures are the
files the evaluation wrote."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import lksmn_arch  # noqa: F401
from lksmn_arch.cli import upscale as upscale_cli
from lksmn_arch.inference import files as upscale
from lksmn_arch.weights import shipped as pretrained
from lksmn_arch.utils.checkpoint import build_model_from_checkpoint, load_state_dict
from lksmn_arch.inference.upscaler import Upscaler
from lksmn_arch.training.pipeline import OptionsError, resolve_shipped_paths

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_model_is_listed_with_its_checksums_and_provenance():
    models = pretrained.shipped_models()
    assert [m.scale for m in models] == [2, 3, 4]
    for model in models:
        assert pretrained.file_sha256(model.path) == model.sha256
        assert pretrained.file_sha256(model.safetensors_path) == model.safetensors_sha256
        assert model.path.stat().st_size < 5 * 2**20
        network, config = build_model_from_checkpoint(model.path)
        assert config == {**model.network, 'lkcd_kernels': tuple(map(tuple, model.network['lkcd_kernels']))}
        default = lksmn_arch.LKSMN(upscale=model.scale)  # the default network (x4: 251,427 parameters)
        assert sum(p.numel() for p in network.parameters() if p.requires_grad) == sum(
            p.numel() for p in default.parameters() if p.requires_grad)
        assert model.iterations > 0 and model.data and model.hardware
        assert (REPO / model.recipe).is_file()
        same = load_state_dict(model.safetensors_path)
        assert all(torch.equal(same[k], v) for k, v in load_state_dict(model.path).items())


def test_upscale_without_a_model_runs_the_shipped_one_and_names_it(tmp_path):
    photo = tmp_path / 'photo.png'
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8))
    lines = []
    report = upscale.upscale_paths(photo, tmp_path / 'out', backend='torch', progress=False, log=lines.append)
    assert lines[0].startswith('model: LKSMN_x4_openphotos (shipped x4 model, trained ')
    shipped = cv2.imread(str(report.written[0][1]))
    expected = upscale.upscale_paths(photo, tmp_path / 'with_m', pretrained.default_model(4).path, backend='torch',
                                     progress=False).written[0][1]
    assert shipped.shape == (40, 48, 3) and np.array_equal(shipped, cv2.imread(str(expected)))


@pytest.mark.parametrize('scale', [2, 3])
def test_upscale_at_scale_2_and_3_without_a_model_runs_that_scale_s_shipped_model_and_names_it(tmp_path, capsys,
                                                                                              scale):
    photo = tmp_path / 'photo.png'
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8))
    assert upscale_cli.main(['-i', str(photo), '-o', str(tmp_path / 'out'), '--scale', str(scale), '--quiet']) == 0
    assert f'model: LKSMN_x{scale}_openphotos (shipped x{scale} model, trained ' in capsys.readouterr().out
    assert cv2.imread(str(tmp_path / 'out' / f'photo_x{scale}.png')).shape == (10 * scale, 12 * scale, 3)
    assert Upscaler.from_checkpoint(scale=scale).scale == scale


def test_a_scale_without_a_shipped_model_says_which_exist(tmp_path, capsys, monkeypatch):
    only_x4 = tmp_path / 'models.json'
    index = json.loads(pretrained.INDEX.read_text())
    only_x4.write_text(json.dumps({'models': [m for m in index['models'] if m['scale'] == 4]}))
    monkeypatch.setattr(pretrained, 'INDEX', only_x4)
    photo = tmp_path / 'photo.png'
    cv2.imwrite(str(photo), np.zeros((8, 8, 3), np.uint8))
    assert upscale_cli.main(['-i', str(photo), '-o', str(tmp_path / 'out'), '--scale', '2', '--quiet']) == 2
    assert 'no shipped LKSMN model for x2 (shipped: x4)' in capsys.readouterr().err
    with pytest.raises(pretrained.ShippedModelError, match='shipped: x4'):
        Upscaler.from_checkpoint(scale=3)


def test_upscaler_defaults_to_the_shipped_model():
    assert Upscaler.from_checkpoint().scale == 4


def test_a_damaged_shipped_file_is_refused(tmp_path, monkeypatch):
    weights = tmp_path / 'weights'
    shutil.copytree(pretrained.WEIGHTS_DIR, weights)
    monkeypatch.setattr(pretrained, 'WEIGHTS_DIR', weights)
    with open(weights / 'LKSMN_x4_openphotos.pth', 'r+b') as handle:
        handle.seek(-100, 2)
        handle.write(b'\0' * 10)
    with pytest.raises(pretrained.ShippedModelError, match='does not match its sha256'):
        pretrained.default_model(4, index=weights / 'models.json')


def test_option_files_name_the_shipped_model_as_shipped_x4():
    opt = {'path': {'pretrain_network_g': 'shipped:x4'}}
    overrides = resolve_shipped_paths(opt, 'test.yml')
    assert opt['path']['pretrain_network_g'] == str(pretrained.default_model(4).path)
    assert overrides == [f'path:pretrain_network_g={pretrained.default_model(4).path}']
    opt = {'path': {'pretrain_network_g': 'shipped:x2'}}
    resolve_shipped_paths(opt, 'test.yml')
    assert opt['path']['pretrain_network_g'] == str(pretrained.default_model(2).path)
    with pytest.raises(OptionsError, match=r'shipped:x8: no shipped LKSMN model for x8 \(shipped: x2, x3, x4\)'):
        resolve_shipped_paths({'path': {'pretrain_network_g': 'shipped:x8'}}, 'test.yml')


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_model_card_tables_are_the_file_the_evaluation_wrote(scale):
    written = (REPO / 'benchmarks' / 'results' / f'model_card_x{scale}.md').read_text().splitlines()
    card = (REPO / 'docs' / 'models.md').read_text()
    missing = [line for line in written if line.strip() and line not in card]
    assert not missing, f'docs/models.md lacks {len(missing)} line(s) of model_card_x{scale}.md, e.g. {missing[0]!r}'
    report = json.loads((REPO / 'benchmarks' / 'results' / f'model_card_x{scale}.json').read_text())
    assert Path(report['shipped']).name == pretrained.default_model(scale).file and report['scale'] == scale


def test_model_card_learning_curves_are_the_file_the_benchmark_wrote():
    """Each scale's row of the picture holds the run of its shipped model (the card's training log), and that
    run reached the shipped checkpoint's iteration; the card's peers (SAFMN at x4) are in the same row."""
    curves = json.loads((REPO / 'benchmarks' / 'results' / 'learning_curves.json').read_text())['runs']
    assert {name.split('/')[0] for name in curves} == {'x2', 'x3', 'x4'}
    for scale in (2, 3, 4):
        card = json.loads((REPO / 'benchmarks' / 'results' / f'model_card_x{scale}.json').read_text())
        row = {name: run for name, run in curves.items() if name.split('/')[0] == f'x{scale}'}
        for role, trained in card['training'].items():
            runs = [run for run in row.values() if trained['log'] in run['logs']]
            assert runs, f'x{scale}: no curve from {trained["log"]} ({role})'
            assert any(point['iteration'] == trained['iterations'] for point in runs[0]['points']), (scale, role)
        assert card['training']['shipped']['iterations'] == pretrained.default_model(scale).iterations
    assert (REPO / 'docs' / 'img' / 'learning_curves.png').is_file()


def test_model_card_precision_table_is_the_file_the_benchmark_wrote():
    """Each row of the bf16-against-fp32 table in docs/models.md: the PSNRs of precision_check_x4.json at that
    iteration, fp32 first, then each bf16 path with its difference from fp32."""
    runs = json.loads((REPO / 'benchmarks' / 'results' / 'precision_check_x4.json').read_text())['runs']
    order = ['x4/fp32 channels_last', 'x4/bf16 autocast channels_last', 'x4/bf16 autocast channels_last, LKCD fp32']
    psnr = {name: {p['iteration']: p['psnr'] for p in runs[name]['points']} for name in order}
    card = (REPO / 'docs' / 'models.md').read_text().splitlines()
    rows = [line for line in card if line.startswith('| 3,500 |') or line.startswith('| 7,000 |')
            or line.startswith('| 10,500 (end) |')]
    assert len(rows) == 3
    for line in rows:
        cells = [c.strip() for c in line.strip('|').split('|')]
        iteration = int(cells[0].split()[0].replace(',', ''))
        fp32, bf16, bf16_lkcd = (psnr[name][iteration] for name in order)
        assert float(cells[1]) == fp32 and float(cells[2]) == bf16 and float(cells[4]) == bf16_lkcd
        for cell, value in ((cells[3], bf16 - fp32), (cells[5], bf16_lkcd - fp32)):
            digits = len(cell.split('.')[1])
            assert float(cell.replace('−', '-')) == pytest.approx(value, abs=0.6 * 10 ** -digits), (line, cell)
