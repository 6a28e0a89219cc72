"""The shipped models' learning curves for docs/models.md: validation PSNR against iteration and wall time.

Reads BasicSR training logs (``experiments/<name>/train_<name>_<stamp>.log``; several per run when it was
resumed, in order), takes every validation's PSNR with the iteration it was run at and the training time up to
it (time within each log from its "Start training" line, summed over the logs: time between sessions is not
counted), and writes them to a JSON file and, with matplotlib installed (the ``bench`` extra), a picture
(runs named ``ROW/LABEL`` share a row, to compare them on one axis)::

    .venv/bin/python benchmarks/learning_curve.py --run x4/LKSMN experiments/LKSMN_x4_openphotos/train_*.log \\
        --run x4/SAFMN .../train_SAFMN_x4_openphotos_*.log --run x2 .../train_LKSMN_x2_openphotos_*.log \\
        --json benchmarks/results/learning_curves.json --picture docs/img/learning_curves.png
"""
import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lksmn_arch.utils.atomic import replace_atomically  # noqa: E402

# A BasicSR log line (time stamp, message) and the iteration in a training-progress message
LOG_LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ INFO: (.*)$')
ITERATION = re.compile(r'iter:\s*([\d,]+)')
_PSNR = re.compile(r'^\s*# psnr: ([\d.]+)')


def validation_points(logs: Sequence[Path]) -> List[Dict[str, float]]:
    """Each validation of a run (its logs in order): iteration, training hours up to it, PSNR. A validation
    repeated at the same iteration (BasicSR validates the latest model again at the end) is kept once."""
    points: List[Dict[str, float]] = []
    hours_before = 0.0
    for log in logs:
        start = stamp = None
        iteration, validating = None, False
        for line in Path(log).read_text(errors='replace').splitlines():
            match = LOG_LINE.match(line)
            if match:
                stamp, text = datetime.strptime(match.group(1), '%Y-%m-%d %H:%M:%S'), match.group(2)
                if text.startswith('Start training'):
                    start = stamp
                found = ITERATION.search(text)
                if found:
                    iteration = int(found.group(1).replace(',', ''))
                validating = text.startswith('Validation ')
                continue
            psnr = _PSNR.match(line)
            if validating and psnr and start is not None and iteration is not None:
                validating = False
                if points and points[-1]['iteration'] == iteration:
                    continue
                points.append({'iteration': iteration, 'hours': hours_before + (stamp - start).total_seconds() / 3600,
                               'psnr': float(psnr.group(1))})
        if start is not None and stamp is not None:
            hours_before += (stamp - start).total_seconds() / 3600
    return points


def panels(names: Sequence[str]) -> Dict[str, List[str]]:
    """The picture's rows: a run named 'ROW/LABEL' (``x4/SAFMN``) shares row ROW with the other runs of that
    prefix, so that compared runs sit on one axis; a name without '/' is a row of its own."""
    rows: Dict[str, List[str]] = {}
    for name in names:
        rows.setdefault(name.split('/', 1)[0], []).append(name)
    return rows


def draw(curves: Dict[str, List[Dict[str, float]]], picture: Path) -> bool:
    """One row per panel (see ``panels``): validation PSNR against iteration (left) and training hours
    (right); False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    grouped = panels(list(curves))
    figure, rows = plt.subplots(len(grouped), 2, figsize=(10, 3.2 * len(grouped)), squeeze=False)
    for (row, names), (by_iteration, by_time) in zip(grouped.items(), rows):
        for name in names:
            points = curves[name]
            label = name.split('/', 1)[1] if '/' in name else None
            psnr = [p['psnr'] for p in points]
            by_iteration.plot([p['iteration'] for p in points], psnr, marker='o', label=label)
            by_time.plot([p['hours'] for p in points], psnr, marker='o', label=label)
        by_iteration.set_xlabel('iteration')
        by_time.set_xlabel('training time (hours)')
        for axes in (by_iteration, by_time):
            axes.set_ylabel(f'{row}: val PSNR, Y (dB)')
            axes.grid(alpha=0.3)
            if len(names) > 1:
                axes.legend(fontsize='small')
    figure.suptitle('Validation PSNR on the open-photos validation split (11 photos)')
    figure.tight_layout()
    picture.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(picture, lambda temp: figure.savefig(temp, format='png', dpi=110), durable=False)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='benchmarks/learning_curve.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--run', nargs='+', action='append', required=True, metavar=('NAME', 'LOG'),
                        help="a run: its name, then its training logs in order (repeat for each run); runs "
                             "named ROW/LABEL share the picture's row ROW")
    parser.add_argument('--json', type=Path, required=True, help='where the points go (JSON)')
    parser.add_argument('--picture', type=Path, default=None, help='where the picture goes (PNG)')
    args = parser.parse_args(argv)
    curves = {}
    for run in args.run:
        if len(run) < 2:
            parser.error(f'--run {run[0]}: give the run\'s training logs after its name')
        missing = [log for log in run[1:] if not Path(log).is_file()]
        if missing:
            parser.error(f'--run {run[0]}: no such log: {missing[0]}')
        curves[run[0]] = validation_points([Path(log) for log in run[1:]])
        if not curves[run[0]]:
            parser.error(f'--run {run[0]}: the logs hold no validation')
    report = {'runs': {name: {'logs': [Path(log).name for log in run[1:]], 'points': curves[name]}
                       for name, run in zip(curves, args.run)}}
    text = json.dumps(report, indent=1) + '\n'
    args.json.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(args.json, lambda temp: temp.write_text(text), durable=False)
    if args.picture and not draw(curves, args.picture):
        print('learning_curve.py: matplotlib is not installed (pip install -e .[bench]); no picture drawn',
              file=sys.stderr)
    for name, points in curves.items():
        best = max(points, key=lambda p: p['psnr'])
        print(f"{name}: {len(points)} validations, best {best['psnr']:.4f} dB at iteration {best['iteration']} "
              f"({best['hours']:.2f} h); last {points[-1]['psnr']:.4f} dB at {points[-1]['iteration']}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
