"""benchmarks/gpu_check.py cannot rot: its dry run (every step on the CPU at tiny sizes) passes and reports
every section, SAFMN rows included."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    out = tmp_path / 'report'
    done = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'gpu_check.py'), '--dry-run', '--out', str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for index, step in enumerate(('environment', 'training', 'resume', 'launcher', 'latency', 'precision', 'cli'), 1):
        assert f'[{index}/7] {step}: ok' in done.stdout
    report = json.loads((out / 'gpu_check.json').read_text())
    steps = report['steps']
    assert report['dry_run'] and all(steps[s]['status'] == 'ok' for s in steps) and len(steps) == 7
    training = steps['training']['result']
    assert {(r['network'], r['layout']) for r in training} == {(n, l) for n in ('LKSMN', 'SAFMN')
                                                               for l in ('NCHW', 'channels_last')}
    assert all(r['loss finite'] and r['iter/s'] > 0 for r in training)
    resume = steps['resume']['result']
    assert resume['SIGTERM exit status'] == 143
    assert resume['resumed from iteration'] == resume['state saved at iteration']
    assert resume['first iteration after resume'] == resume['state saved at iteration'] + 1
    assert steps['launcher']['result']['final checkpoint']
    latency = steps['latency']['result']
    for network in ('LKSMN', 'SAFMN'):
        paths = {r['path'] for r in latency if r['network'] == network and r['median ms']}
        assert {'eager', 'channels_last', 'compile'} <= paths, network
    assert any(r['path'].startswith('Upscaler tiles') for r in latency)
    assert all(r['non-finite'] == 0 for r in steps['precision']['result'])
    assert steps['cli']['result']['within']
    text = (out / 'gpu_check.md').read_text()
    for step in ('environment', 'training', 'resume', 'launcher', 'latency', 'precision', 'cli'):
        assert f'## {step}: ok' in text


def test_gpu_check_help_names_the_preparation_and_the_command(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'gpu_check.py'), '--help'], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    for needle in ('scripts/gpu_wheels.sh', '--no-index', 'carry', '--dry-run', 'gpu_check.json'):
        assert needle in done.stdout
