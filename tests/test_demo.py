"""The embedded demo runs end to end (data from scikit-image's photos, BasicSR training and testing)."""
import re

from lksmn_arch.cli import demo as demo_cli
from lksmn_arch.data import sample_photos
from lksmn_arch.data.prepare import bicubic_upscale
from lksmn_arch.training import demo

def test_demo_trains_tests_and_scores_lksmn_against_bicubic(tmp_path, capsys):
    assert demo_cli.main(['--out', str(tmp_path / 'demo'), '--iters', '2', '--batch', '2']) == 0
    out = capsys.readouterr().out
    assert '| image | Bicubic PSNR / SSIM | LKSMN (this demo) PSNR / SSIM | LKSMN shipped model PSNR / SSIM |' in out
    rows = re.findall(r'^\| (astronaut|chelsea|coffee) \| ([0-9.]+) / ([0-9.]+) \| ([0-9.]+) / ([0-9.]+) '
                      r'\| ([0-9.]+) / ([0-9.]+) \|$', out, re.MULTILINE)
    assert [r[0] for r in rows] == ['astronaut', 'chelsea', 'coffee']
    assert all(20 < float(r[1]) < 40 for r in rows), 'bicubic PSNR of real photos at x4 lies in 20-40 dB'
    assert all(float(r[5]) > float(r[1]) for r in rows), 'the shipped model is above bicubic on every photo'
    assert 'The shipped model (trained longer on more data' in out
    assert (tmp_path / 'demo' / 'comparison.png').stat().st_size > 10_000
    assert (tmp_path / 'demo' / 'experiments' / 'LKSMN_x4_demo' / 'models' / 'net_g_latest.pth').is_file()
    assert 'LKSMN is' in out and 'bicubic by' in out


def test_demo_rerun_replaces_its_own_previous_output(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo_cli, 'run_demo', lambda out, iters, batch: calls.append(out) or _fake_result(out))
    (tmp_path / demo.MARKER).write_text('')
    (tmp_path / 'old.txt').write_text('old demo file')
    assert demo_cli.main(['--out', str(tmp_path)]) == 0
    assert calls == [tmp_path] and not (tmp_path / 'old.txt').exists()


def _fake_result(out):
    return {'table': '', 'figure': out / 'comparison.png', 'timings': {'data': 0, 'train': 0, 'test': 0},
            'psnr_gain': 0.0, 'checkpoint': out / 'net.pth'}


def test_demo_refuses_a_non_empty_output_folder(tmp_path, capsys):
    (tmp_path / 'keep.txt').write_text('user data')
    assert demo_cli.main(['--out', str(tmp_path)]) == 2
    assert 'is not empty' in capsys.readouterr().err
    assert (tmp_path / 'keep.txt').read_text() == 'user data'


def test_held_out_photos_are_not_in_the_training_set():
    assert not set(sample_photos.TEST_PHOTOS) & set(sample_photos.TRAIN_PHOTOS)


def test_bicubic_baseline_keeps_the_size_and_range():
    import numpy as np
    lr = (np.random.default_rng(0).random((10, 7, 3)) * 255).astype(np.uint8)
    up = bicubic_upscale(lr, 4)
    assert up.shape == (40, 28, 3) and up.dtype == np.uint8


def test_demo_refuses_an_out_that_is_a_file_or_lies_under_one(tmp_path, capsys):
    existing = tmp_path / 'notes.txt'
    existing.write_text('user data')
    for out in (existing, existing / 'demo'):
        assert demo_cli.main(['--out', str(out)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f'--out {out}' in lines[0] and 'is a file' in lines[0]
    assert existing.read_text() == 'user data'


def test_a_demo_run_that_fails_is_one_line_and_status_1(tmp_path, monkeypatch, capsys):
    from lksmn_arch.training.pipeline import OptionsError

    def failing(out, iters, batch):
        raise OptionsError('train.yml: something is wrong')

    monkeypatch.setattr(demo_cli, 'run_demo', failing)
    assert demo_cli.main(['--out', str(tmp_path / 'demo')]) == 1
    assert capsys.readouterr().err.strip() == 'lksmn-demo: error: train.yml: something is wrong'
