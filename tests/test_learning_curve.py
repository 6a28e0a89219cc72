"""benchmarks/learning_curve.py: validation points read from BasicSR training logs, across a resumed run."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))

import learning_curve  # noqa: E402

FIRST = """2026-12-03 10:00:00,000 INFO: Start training from epoch: 0, iter: 0
2026-12-03 10:06:00,000 INFO: [LKSMN..][epoch:  0, iter:   3,500, lr:(1.0e-03,)] l_pix: 1e-02
2026-12-03 10:06:30,000 INFO: Validation openphotos_val
\t # psnr: 30.5000\tBest: 30.5000 @ 3500 iter
\t # ssim: 0.8000\tBest: 0.8000 @ 3500 iter
"""
SECOND = """2026-12-03 12:00:00,000 INFO: Start training from epoch: 0, iter: 3500
2026-12-03 12:12:00,000 INFO: [LKSMN..][epoch:  0, iter:   7,000, lr:(5.0e-04,)] l_pix: 1e-02
2026-12-03 12:12:00,000 INFO: Validation openphotos_val
\t # psnr: 31.2500\tBest: 31.2500 @ 7000 iter
2026-12-03 12:12:30,000 INFO: Save the latest model.
2026-12-03 12:18:00,000 INFO: Validation openphotos_val
\t # psnr: 31.2500\tBest: 31.2500 @ 7000 iter
"""


def test_validations_of_a_resumed_run_count_training_time_only_and_a_repeated_one_once(tmp_path):
    (tmp_path / 'a.log').write_text(FIRST)
    (tmp_path / 'b.log').write_text(SECOND)
    points = learning_curve.validation_points([tmp_path / 'a.log', tmp_path / 'b.log'])
    assert [(p['iteration'], p['psnr']) for p in points] == [(3500, 30.5), (7000, 31.25)]
    assert abs(points[0]['hours'] - 6.5 / 60) < 1e-9  # the validation's own time stamp, 10:06:30
    assert abs(points[1]['hours'] - (6.5 / 60 + 12 / 60)) < 1e-9  # the first log's 6.5 min, then 12 of the second


def test_a_run_without_validations_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / 'a.log').write_text(FIRST.split('\n')[0] + '\n')
    with pytest.raises(SystemExit) as stop:
        learning_curve.main(['--run', 'x4', str(tmp_path / 'a.log'), '--json', str(tmp_path / 'c.json')])
    assert stop.value.code == 2
    assert '--run x4: the logs hold no validation' in capsys.readouterr().err
    assert not (tmp_path / 'c.json').exists()


def test_runs_named_row_slash_label_share_a_row_of_the_picture_and_plain_names_keep_their_own():
    rows = learning_curve.panels(['x4/LKSMN', 'x4/SAFMN', 'x3', 'x2/fine-tuned', 'x2/from scratch'])
    assert rows == {'x4': ['x4/LKSMN', 'x4/SAFMN'], 'x3': ['x3'], 'x2': ['x2/fine-tuned', 'x2/from scratch']}


def test_a_shared_row_is_drawn_with_one_line_per_run(tmp_path):
    log = tmp_path / 'train.log'
    log.write_text(FIRST)
    picture = tmp_path / 'curves.png'
    assert learning_curve.main(['--run', 'x4/LKSMN', str(log), '--run', 'x4/SAFMN', str(log),
                                '--json', str(tmp_path / 'c.json'), '--picture', str(picture)]) == 0
    assert picture.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
