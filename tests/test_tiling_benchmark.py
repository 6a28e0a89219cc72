"""benchmarks/tiling_psnr.py: its figures of cross-faded and exact tiles against whole-image output."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))

import tiling_psnr  # noqa: E402


def test_tiling_benchmark_finds_exact_tiles_equal_and_cross_faded_ones_not_and_writes_its_json(tmp_path):
    out = tmp_path / 'tiles.json'
    assert tiling_psnr.main(['--scale', '4', '--tile', '48', '--tile-pad', '8', '--timing', '--repeats', '1',
                             '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    faded, exact = report['rows']
    assert (faded['tiles'], faded['tile_pad'], exact['tiles'], exact['tile_pad']) == ('cross-faded', 8, 'exact', 42)
    assert exact['max_abs_diff'] < 1e-4 < faded['max_abs_diff']
    assert exact['seconds'] > 0 and exact['seconds_whole'] > 0
    assert report['markdown'][2].startswith('| tiles | tile | context |')
