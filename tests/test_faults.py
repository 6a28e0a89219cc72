"""Training that survives faults: kills at any point, preemption signals, corrupt or hostile checkpoints,
non-finite losses and failing writes. Each run is ``lksmn-train`` in a subprocess on tiny data.

Faults the plugin cannot cause by itself (a save stalled half-way, a failing disk, a NaN loss) are injected by
a driver script written by this file, which patches ``torch.save`` / registers a loss before calling
``lksmn_arch.cli.train.main``; the plugin has no test hooks.

Nothing here depends on timing, so that the tests pass on a loaded machine: a test waits for what it can
observe (a log line, a file, a temporary file of a save that the driver holds half-written until the test
has acted) with generous time limits, never for a fixed delay or a short window.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
import yaml

from conftest import free_port, paired_dataset_options, run_module, training_options, write_yaml

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
NAME = 'faults'
ITERS_PER_EPOCH = 3  # 6 training pairs, batch 2, one process
RESUMED = re.compile(r'Resuming training from epoch: (\d+), iter: (\d+)\.')
LOGGED_ITER = re.compile(r'\biter:\s+(\d+),')
TEMPORARY = re.compile(r'^\..+\.tmp-\d+$')
RANDOM_PART = r'(?:[^.]+\.)?'  # a save's temporary is .<final name>.<random>.tmp-<pid> (utils/atomic.py)

DRIVER = '''"""lksmn-train with test-only faults chosen by environment variables."""
import errno
import io
import os
import re
import sys
import time

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
import torch
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
from torch.nn import functional as F

FAIL_FROM = int(os.environ.get('FAULT_FAIL_SAVE_FROM', '0'))  # this and later torch.save calls hit a full disk
# While the file HOLD exists (in the working directory), a save whose temporary file name matches the regular
# expression on its first line writes half its bytes and waits (up to 10 minutes) for the file to go away, so
# that a test can kill the process in the middle of that save. A second line "while-stopping" holds only the
# saves of a stop on SIGTERM/SIGINT.
HOLD = 'hold_saves'
real_save = torch.save
calls = 0
stopping = False


def held(f):
    try:
        with open(HOLD) as control:
            pattern, _, condition = control.read().partition('\\n')
    except FileNotFoundError:
        return False
    if condition.strip() == 'while-stopping' and not stopping:
        return False
    return re.search(pattern, os.path.basename(str(getattr(f, 'name', '')))) is not None


def faulty_save(obj, f, *args, **kwargs):
    global calls
    calls += 1
    if FAIL_FROM and calls >= FAIL_FROM:
        f.write(b'partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if isinstance(f, (str, os.PathLike)) or not held(f):
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    f.write(data[:len(data) // 2])
    f.flush()
    deadline = time.monotonic() + 600
    while os.path.exists(HOLD) and time.monotonic() < deadline:
        time.sleep(0.01)
    f.write(data[len(data) // 2:])


torch.save = faulty_save


@LOSS_REGISTRY.register()
class InjectedL1Loss(torch.nn.Module):
    """L1 loss made non-finite (times ``value``) at the listed calls, or from call ``bad_from`` on."""

    def __init__(self, loss_weight=1.0, reduction='mean', bad_calls=(), bad_from=0, value='nan'):
        super().__init__()
        self.loss_weight, self.bad_calls, self.bad_from, self.value = loss_weight, set(bad_calls), bad_from, value
        self.calls = 0

    def forward(self, pred, target):
        self.calls += 1
        loss = self.loss_weight * F.l1_loss(pred, target)
        if self.calls in self.bad_calls or (self.bad_from and self.calls >= self.bad_from):
            loss = loss * float(self.value)
        return loss


@MODEL_REGISTRY.register()
class OtherSRModel(SRModel):
    """A model type of another project (here BasicSR's SRModel under another name)."""


from lksmn_arch.models.lksmn_model import LKSMNModel  # noqa: E402
from lksmn_arch.cli.train import main  # noqa: E402

save_and_stop = LKSMNModel._save_and_stop


def marked_save_and_stop(self, *args, **kwargs):
    global stopping
    stopping = True
    return save_and_stop(self, *args, **kwargs)


LKSMNModel._save_and_stop = marked_save_and_stop

sys.exit(main())
'''


class Evil:
    """Pickles to a call of ``open(marker, 'w')``: loading it with full unpickling creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), 'w'))


# --- helpers --------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('driver') / 'train_with_faults.py'
    path.write_text(DRIVER)
    return path


def _options(tiny_pairs, total_iter: int, save_every: int, ema_decay: float = 0.5, model_type: str = 'LKSMNModel',
             **train) -> dict:
    opt = training_options(NAME, paired_dataset_options('train', tiny_pairs['train_gt'], tiny_pairs['train_lq'],
                                                        'train'), None, total_iter, save_every, ema_decay)
    opt['model_type'] = model_type
    opt['train'].update(train)
    return opt


MODEL_TYPES = ['LKSMNModel', 'SRModel']  # SRModel: an option file written for plain BasicSR
RUNS_AS_LKSMN = re.compile(r'INFO: train\.yml: model_type SRModel runs as LKSMNModel \(SRModel with the same option '
                           r'keys, plus atomic checkpoint saves, a checkpoint on SIGTERM/SIGINT, verified resume, '
                           r'non-finite step skipping and weights-only loading\)\.')


def _assert_model_type_announced(model_type: str, output: str, workdir: Optional[Path] = None,
                                 built: bool = True) -> None:
    """An SRModel option file says once, on the console and in the run's log, that it runs as LKSMNModel
    (and BasicSR then builds an LKSMNModel, if ``built``)."""
    if model_type == 'LKSMNModel':
        assert 'runs as LKSMNModel' not in output
        return
    assert len(RUNS_AS_LKSMN.findall(output)) == 1, output[-3000:]
    assert ('Model [LKSMNModel] is created.' in output) is built
    if workdir is not None:
        logs = sorted(_experiment(workdir).glob('train_*.log'))
        assert logs and RUNS_AS_LKSMN.search(logs[-1].read_text())


def _command(driver: Path, *args: str) -> List[str]:
    return [sys.executable, str(driver), '-opt', 'train.yml', *args]


def _run(driver: Path, workdir: Path, *args: str, env: Optional[Dict[str, str]] = None,
         timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(_command(driver, *args), cwd=workdir, env={**ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def _hold_saves(workdir: Path, pattern: str, while_stopping: bool = False) -> None:
    """Make the driver stall, half-written, every save whose temporary file name matches ``pattern`` (only the
    saves of a stop on a signal if ``while_stopping``), until ``_release_saves``."""
    (workdir / 'hold_saves').write_text(pattern + ('\nwhile-stopping' if while_stopping else ''))


def _release_saves(workdir: Path) -> None:
    (workdir / 'hold_saves').unlink(missing_ok=True)


_started: List[subprocess.Popen] = []  # every process a test starts; none outlives the test


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
            process.wait(60)


class Run:
    """A training process whose output goes to a file that the test can watch."""

    def __init__(self, driver: Path, workdir: Path, *args: str, env: Optional[Dict[str, str]] = None) -> None:
        self.output_path = workdir / f'run_{time.monotonic_ns()}.out'
        self._output = open(self.output_path, 'w')
        self.process = subprocess.Popen(_command(driver, *args), cwd=workdir, env={**ENV, **(env or {})},
                                        stdout=self._output, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)  # its own process group, as under a scheduler
        _started.append(self.process)

    def output(self) -> str:
        return self.output_path.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f'training exited ({self.process.returncode}) before {what}:\n{self.output()[-3000:]}')
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f'timed out waiting for {what}:\n{self.output()[-3000:]}')
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f'training still running after {timeout} s:\n{self.output()[-3000:]}')
        finally:
            self._output.close()


def _experiment(workdir: Path) -> Path:
    return workdir / 'experiments' / NAME


def _temporaries(folder: Path, pattern: str = '', run: Optional['Run'] = None) -> List[Path]:
    """Temporary files of saves in ``folder`` (of ``run``'s process only, if given)."""
    if not folder.is_dir():
        return []
    owner = f'.tmp-{run.process.pid}' if run else ''
    return [p for p in folder.glob('.*') if TEMPORARY.match(p.name) and pattern in p.name and p.name.endswith(owner)]


def _complete_checkpoints(workdir: Path) -> List[int]:
    """Iterations with both a training state and net_g weights under their final names."""
    models, states = _experiment(workdir) / 'models', _experiment(workdir) / 'training_states'
    if not states.is_dir():
        return []
    return sorted(int(p.stem) for p in states.glob('*.state') if (models / f'net_g_{p.stem}.pth').is_file())


def _assert_every_checkpoint_loads(workdir: Path) -> None:
    """No file under a final checkpoint name is truncated (BasicSR's plain torch.save leaves such files)."""
    experiment = _experiment(workdir)
    for path in [*experiment.glob('models/*.pth'), *experiment.glob('training_states/*.state')]:
        torch.load(path, map_location='cpu', weights_only=True)


def yaml_load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _load(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def _all_finite(tensors: Dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def _same(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _resumed_from(output: str) -> Optional[Tuple[int, int]]:
    match = RESUMED.search(output)
    return (int(match.group(1)), int(match.group(2))) if match else None


@pytest.fixture(scope='module')
def finished_run(tiny_pairs, driver, tmp_path_factory) -> Path:
    """A complete 4-iteration run with checkpoints at 2 and 4 (EMA on)."""
    workdir = tmp_path_factory.mktemp('finished')
    write_yaml(workdir / 'train.yml', _options(tiny_pairs, total_iter=4, save_every=2))
    result = _run(driver, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _complete_checkpoints(workdir) == [2, 4]
    return workdir


def _copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source / 'experiments', target / 'experiments')
    shutil.copy(source / 'train.yml', target / 'train.yml')
    return target


# --- kills and preemption -------------------------------------------------------------------------------

def test_training_killed_at_any_point_resumes_from_its_last_checkpoint_to_total_iter(tiny_pairs, driver, tmp_path):
    """SIGKILL during network and state saves, between checkpoints, and a double SIGTERM during the
    preemption save: after each, --auto_resume continues from the newest complete checkpoint, no file
    under a checkpoint name is ever truncated, and the last run reaches total_iter. The saves to interrupt
    are held half-written by the driver until the test has acted, so no kill depends on timing."""
    every = 4  # the interrupted runs never finish by themselves: the last run is given total_iter
    write_yaml(tmp_path / 'train.yml', _options(tiny_pairs, total_iter=100000, save_every=every))
    models, states = _experiment(tmp_path) / 'models', _experiment(tmp_path) / 'training_states'

    def newer_state_than(iteration: int) -> Callable[[], bool]:
        return lambda: any(i > iteration for i in _complete_checkpoints(tmp_path))

    def kill_writing_first_weights(run: Run) -> None:  # the run's first save, net_g_4.pth, is held
        run.wait_for(lambda: bool(_temporaries(models, 'net_g_', run)), 'the first network weights save')
        run.process.kill()

    def kill_writing_a_state(run: Run) -> None:  # the state of the run's second checkpoint is held
        first = started_from + every
        run.wait_for(lambda: first in _complete_checkpoints(tmp_path), f'the checkpoint of iteration {first}')
        run.wait_for(lambda: bool(_temporaries(states, f'.{first + every}.state', run)),
                     f'the training state save of iteration {first + every}')
        run.process.kill()

    def kill_between_checkpoints(run: Run) -> None:
        run.wait_for(newer_state_than(started_from), 'a new checkpoint')
        run.process.kill()

    def sigterm_twice_during_preemption_save(run: Run) -> None:  # the stop's saves are held
        run.wait_for(newer_state_than(started_from), 'a new checkpoint')
        run.wait_for(lambda: not _temporaries(models, run=run) and not _temporaries(states, run=run),
                     'the end of that save')
        checkpoints_before_signals[:] = _complete_checkpoints(tmp_path)
        run.process.send_signal(signal.SIGTERM)
        run.wait_for(lambda: bool(_temporaries(models, run=run)), 'the preemption save')
        run.process.send_signal(signal.SIGTERM)

    def kill_writing_weights(run: Run) -> None:  # the run's first save of network weights is held
        run.wait_for(lambda: bool(_temporaries(models, f'.net_g_{started_from + every}.pth', run)),
                     'a network weights save')
        run.process.kill()

    holds = {kill_writing_first_weights: lambda: _hold_saves(tmp_path, rf'^\.net_g_\d+\.pth\.{RANDOM_PART}tmp-'),
             kill_writing_a_state: lambda: _hold_saves(tmp_path,
                                                       rf'^\.{started_from + 2 * every}\.state\.{RANDOM_PART}tmp-'),
             sigterm_twice_during_preemption_save: lambda: _hold_saves(tmp_path, '', while_stopping=True),
             kill_writing_weights: lambda: _hold_saves(tmp_path, rf'^\.net_g_\d+\.pth\.{RANDOM_PART}tmp-')}
    checkpoints_before_signals: List[int] = []
    interruptions = [kill_writing_first_weights, kill_writing_a_state, kill_between_checkpoints,
                     sigterm_twice_during_preemption_save, kill_writing_weights]
    survived = 0
    for number, interrupt in enumerate(interruptions + [None]):
        expected = max(_complete_checkpoints(tmp_path), default=None)
        started_from = expected or 0
        holds.get(interrupt, lambda: _release_saves(tmp_path))()
        if interrupt is None:
            total = started_from + 2 * every
            run = Run(driver, tmp_path, '--auto_resume', '--force_yml', f'train:total_iter={total}')
            assert run.finish() == 0, run.output()[-3000:]
        else:
            run = Run(driver, tmp_path, *(['--auto_resume'] if number else []))
            interrupt(run)
            status = run.finish()  # a run that waited for its held save would not end before the time limit
            _release_saves(tmp_path)
            if interrupt is sigterm_twice_during_preemption_save:
                assert status == 128 + signal.SIGTERM, run.output()[-3000:]
                assert 'SIGTERM received: saving models and training state at iteration' in run.output()
                assert 'Received SIGTERM again: exiting now without saving' in run.output()
                assert 'Training stopped by SIGTERM' not in run.output(), 'the second signal must not wait for the save'
                assert _complete_checkpoints(tmp_path) == checkpoints_before_signals
            else:
                assert status == -signal.SIGKILL, run.output()[-3000:]
        if number:
            # continued from the newest complete checkpoint: no more than the work since it was lost
            resumed = _resumed_from(run.output())
            assert (resumed[1] if resumed else None) == expected, run.output()[-3000:]
            if resumed:
                assert resumed[0] == (expected - 1) // ITERS_PER_EPOCH
        _assert_every_checkpoint_loads(tmp_path)
        survived += interrupt is not None
    print(f'\nkills survived: {survived} (SIGKILL x4 during/between saves, SIGTERM x2 during the preemption '
          f'save), final run reached iteration {total}')
    assert survived == len(interruptions) == 5
    assert _load(states / f'{total}.state')['iter'] == total
    final = _load(models / 'net_g_latest.pth')
    assert _all_finite(final['params']) and _all_finite(final['params_ema'])
    assert not _temporaries(models) and not _temporaries(states), 'leftover temporary files must be removed'


def _assert_process_group_gone(pgid: int, timeout: float = 60) -> None:
    """No process of group ``pgid`` (a run and its DataLoader workers) is left, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            pytest.fail(f'processes of the stopped run (process group {pgid}) were left running')
        time.sleep(0.05)


@pytest.mark.parametrize('model_type', MODEL_TYPES)
def test_sigterm_saves_the_current_iteration_and_resume_continues_with_the_next(tiny_pairs, driver, tmp_path,
                                                                               model_type):
    """SIGTERM to the whole process group (as Slurm sends it), DataLoader workers included."""
    opt = _options(tiny_pairs, total_iter=100000, save_every=100000, model_type=model_type)
    opt['datasets']['train'].update(num_worker_per_gpu=1, dataset_enlarge_ratio=2)
    iters_per_epoch = 2 * ITERS_PER_EPOCH
    write_yaml(tmp_path / 'train.yml', opt)
    run = Run(driver, tmp_path)
    run.wait_for(lambda: any(int(i) >= 8 for i in LOGGED_ITER.findall(run.output())), 'iteration 8')
    os.killpg(run.process.pid, signal.SIGTERM)
    assert run.finish() == 128 + signal.SIGTERM, run.output()[-3000:]
    _assert_process_group_gone(run.process.pid)  # the DataLoader worker (it ignores SIGTERM) ended too
    output = run.output()
    _assert_model_type_announced(model_type, output, tmp_path)
    stopped = re.search(r'Training stopped by SIGTERM at iteration (\d+) \(epoch (\d+)\)', output)
    assert stopped, output[-3000:]
    k, epoch = int(stopped.group(1)), int(stopped.group(2))
    # iteration k ran (its step is in the saved state) but stopped before BasicSR logged it
    assert max(int(i) for i in LOGGED_ITER.findall(output)) == k - 1
    assert 'Resume with: lksmn-train -opt train.yml --auto_resume' in output
    models, states = _experiment(tmp_path) / 'models', _experiment(tmp_path) / 'training_states'
    assert [p.name for p in states.iterdir()] == [f'{k}.state']
    state = _load(states / f'{k}.state')
    assert (state['iter'], state['epoch']) == (k, epoch) and epoch == (k - 1) // iters_per_epoch
    assert sorted(_load(models / f'net_g_{k}.pth')) == ['params', 'params_ema']

    result = _run(driver, tmp_path, '--auto_resume', '--force_yml', f'train:total_iter={k + 3}',
                  f'logger:save_checkpoint_freq={k + 3}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'Resuming training from epoch: {epoch}, iter: {k}.' in result.stderr
    assert [int(i) for i in LOGGED_ITER.findall(result.stderr)] == [k + 1, k + 2, k + 3]
    assert _load(states / f'{k + 3}.state')['iter'] == k + 3
    _assert_model_type_announced(model_type, result.stderr)


@pytest.mark.parametrize('held', ['models/net_g_4.pth', 'training_states/4.state'])
def test_srmodel_option_file_killed_during_a_save_keeps_the_previous_checkpoint(tiny_pairs, driver, tmp_path, held):
    """An option file written for plain BasicSR (model_type SRModel), SIGKILLed half-way through writing the
    second checkpoint's weights or state: the first checkpoint loads and --auto_resume continues from it."""
    write_yaml(tmp_path / 'train.yml', _options(tiny_pairs, total_iter=6, save_every=2, model_type='SRModel'))
    folder, name = (_experiment(tmp_path) / held).parent, Path(held).name
    _hold_saves(tmp_path, '^' + re.escape(f'.{name}.') + RANDOM_PART + 'tmp-')
    run = Run(driver, tmp_path)
    run.wait_for(lambda: bool(_temporaries(folder, f'.{name}.', run)), f'the save of {held}')
    run.process.kill()
    assert run.finish() == -signal.SIGKILL
    _release_saves(tmp_path)
    _assert_model_type_announced('SRModel', run.output(), tmp_path)
    assert not (folder / name).exists(), 'nothing may appear under the final name of an interrupted save'
    assert _complete_checkpoints(tmp_path) == [2]
    _assert_every_checkpoint_loads(tmp_path)

    result = _run(driver, tmp_path, '--auto_resume')
    assert result.returncode == 0, result.stderr[-3000:]
    assert _resumed_from(result.stderr) == (0, 2)
    assert _complete_checkpoints(tmp_path) == [2, 4, 6]
    _assert_every_checkpoint_loads(tmp_path)


def test_another_model_type_runs_as_written_with_a_warning_naming_the_guarantees_it_lacks(tiny_pairs, driver,
                                                                                           tmp_path):
    write_yaml(tmp_path / 'train.yml', _options(tiny_pairs, total_iter=2, save_every=2, model_type='OtherSRModel'))
    result = _run(driver, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = ('WARNING: train.yml: model_type OtherSRModel runs as written, without these guarantees (they hold '
               'for LKSMNModel and SRModel only): atomic checkpoint saves; a checkpoint saved on SIGTERM/SIGINT '
               'before stopping; skipping of non-finite steps; weights-only loading with a one-line refusal of '
               'pickled code. The option checks and verified --auto_resume still apply.')
    assert result.stderr.count(warning) == 1, result.stderr[-3000:]
    assert warning in max(_experiment(tmp_path).glob('train_*.log')).read_text()
    assert 'Model [OtherSRModel] is created.' in result.stderr
    assert 'runs as LKSMNModel' not in result.stderr


# --- damaged and hostile checkpoints --------------------------------------------------------------------

def test_corrupt_newest_state_falls_back_to_the_previous_one_and_says_so(finished_run, driver, tmp_path):
    workdir = _copy_run(finished_run, tmp_path)
    states, models = _experiment(workdir) / 'training_states', _experiment(workdir) / 'models'
    newest = states / '4.state'
    newest.write_bytes(newest.read_bytes()[:len(newest.read_bytes()) // 2])
    leftovers = [states / '.6.state.tmp-4242', models / '.net_g_6.pth.tmp-4242']
    for path in leftovers:
        path.write_bytes(b'half a checkpoint')
    result = _run(driver, workdir, '--auto_resume', '--force_yml', 'train:total_iter=6')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'Skipping training state {newest}: unreadable or incomplete' in result.stderr
    assert 'Resuming from the older training state' in result.stderr
    assert _resumed_from(result.stderr) == (0, 2)
    log = max(_experiment(workdir).glob('train_*.log'), key=lambda p: p.stat().st_mtime_ns).read_text()
    assert 'Resuming training from epoch: 0, iter: 2.' in log
    assert f'Skipping training state {newest}' in log, 'the fallback must be in the run log too'
    assert not any(path.exists() for path in leftovers)
    assert _load(states / '6.state')['iter'] == 6 and _load(states / '4.state')['iter'] == 4


def _resume_options(workdir: Path) -> dict:
    experiment = _experiment(workdir)
    return {'auto_resume': True, 'rank': 0, 'network_g': {'type': 'LKSMN'},
            'path': {'models': str(experiment / 'models'), 'training_states': str(experiment / 'training_states'),
                     'pretrain_network_g': None, 'resume_state': None}}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _poison_weights(path: Path) -> None:
    checkpoint = _load(path)
    next(iter(checkpoint['params'].values())).fill_(float('nan'))
    torch.save(checkpoint, path)


def _cast_weights_to_int8(path: Path) -> None:
    checkpoint = _load(path)
    checkpoint['params'] = {k: v.to(torch.int8) for k, v in checkpoint['params'].items()}
    torch.save(checkpoint, path)


def _pickle_into_state(path: Path) -> None:
    state = _load(path)
    state['extra'] = Evil(path.parent / 'pwned')
    torch.save(state, path)


def _relabel_state(path: Path) -> None:
    state = _load(path)
    state['iter'] = 2
    torch.save(state, path)


@pytest.mark.parametrize('damage, target', [
    (_truncate, 'training_states/4.state'),
    (_truncate, 'models/net_g_4.pth'),
    (Path.unlink, 'models/net_g_4.pth'),
    (_poison_weights, 'models/net_g_4.pth'),
    (_cast_weights_to_int8, 'models/net_g_4.pth'),
    (_pickle_into_state, 'training_states/4.state'),
    (_relabel_state, 'training_states/4.state'),
], ids=['truncated state', 'truncated weights', 'missing weights', 'nan weights', 'int8 weights', 'pickled state',
        'state of another iteration'])
def test_auto_resume_skips_a_newest_checkpoint_that_is_damaged_in_any_way(finished_run, tmp_path, damage, target):
    from lksmn_arch.training import resume
    workdir = _copy_run(finished_run, tmp_path)
    damage(_experiment(workdir) / target)
    opt = _resume_options(workdir)
    state = resume.load_resume_state(opt)
    assert state['iter'] == 2
    assert opt['path']['pretrain_network_g'].endswith('net_g_2.pth')
    assert any('4.state' in message and 'Skipping' in message for message in resume.pending_warnings)
    assert not (_experiment(workdir) / 'training_states' / 'pwned').exists()


def _pickled_pretrained(finished_run: Path, tmp_path: Path) -> Tuple[Path, Path]:
    """Weights of the finished run plus an object that creates a marker file when unpickled."""
    marker = tmp_path / 'pwned'
    checkpoint = _load(_experiment(finished_run) / 'models' / 'net_g_4.pth')
    checkpoint['extra'] = Evil(marker)
    torch.save(checkpoint, tmp_path / 'pretrained.pth')
    return tmp_path / 'pretrained.pth', marker


@pytest.mark.parametrize('model_type', MODEL_TYPES)
def test_pretrained_weights_carrying_pickled_code_are_refused(finished_run, driver, tmp_path, model_type):
    pretrained, marker = _pickled_pretrained(finished_run, tmp_path)
    opt = yaml_load(finished_run / 'train.yml')
    opt['model_type'] = model_type
    opt['path']['pretrain_network_g'] = str(pretrained)
    write_yaml(tmp_path / 'train.yml', opt)
    result = _run(driver, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f'lksmn-train: error: refusing checkpoint {pretrained}: torch.load(weights_only=True) refused it' \
        in result.stderr
    assert 'Traceback' not in result.stderr
    assert not marker.exists()
    assert not list(_experiment(tmp_path).glob('models/*.pth'))
    _assert_model_type_announced(model_type, result.stderr, built=False)  # refused while it was being built


def test_lksmn_test_refuses_pickled_weights_named_by_an_srmodel_option_file(finished_run, tiny_pairs, tmp_path):
    pretrained, marker = _pickled_pretrained(finished_run, tmp_path)
    train_opt = yaml_load(finished_run / 'train.yml')
    opt = {'name': 'faults_test', 'model_type': 'SRModel', 'scale': 2, 'num_gpu': 'auto',
           'datasets': {'test_1': paired_dataset_options('val', tiny_pairs['val_gt'], tiny_pairs['val_lq'], 'val')},
           'network_g': train_opt['network_g'],
           'path': {'pretrain_network_g': str(pretrained), 'param_key_g': 'params', 'strict_load_g': True},
           'val': {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2}}}}
    write_yaml(tmp_path / 'test.yml', opt)
    result = run_module('lksmn_arch.cli.test', '-opt', 'test.yml', cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f'lksmn-test: error: refusing checkpoint {pretrained}: torch.load(weights_only=True) refused it' \
        in result.stderr
    assert 'Traceback' not in result.stderr
    assert not marker.exists()
    assert ('INFO: test.yml: model_type SRModel runs as LKSMNModel (SRModel with the same option keys, plus '
            'weights-only loading).') in result.stderr


def test_resume_state_carrying_pickled_code_is_refused(finished_run, driver, tmp_path):
    workdir = _copy_run(finished_run, tmp_path)
    marker = workdir / 'pwned'
    state_path = _experiment(workdir) / 'training_states' / '4.state'
    state = _load(state_path)
    state['extra'] = Evil(marker)
    torch.save(state, state_path)
    opt = yaml_load(workdir / 'train.yml')
    opt['path']['resume_state'] = str(state_path)
    opt['train']['total_iter'] = 6
    write_yaml(workdir / 'train.yml', opt)
    result = _run(driver, workdir)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f'lksmn-train: error: refusing checkpoint {state_path}: torch.load(weights_only=True) refused it' in result.stderr
    assert 'Traceback' not in result.stderr
    assert not marker.exists()
    assert not (_experiment(workdir) / 'training_states' / '6.state').exists()


# --- non-finite losses ----------------------------------------------------------------------------------

def _injected_loss(**fault) -> dict:
    return {'type': 'InjectedL1Loss', 'loss_weight': 1.0, 'reduction': 'mean', **fault}


@pytest.mark.parametrize('model_type', MODEL_TYPES)
def test_a_nan_loss_step_is_skipped_and_training_continues(tiny_pairs, driver, tmp_path, model_type):
    write_yaml(tmp_path / 'train.yml', _options(tiny_pairs, total_iter=6, save_every=2, model_type=model_type,
                                                pixel_opt=_injected_loss(bad_calls=[3])))
    result = _run(driver, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_model_type_announced(model_type, result.stderr, tmp_path)
    warnings = re.findall(r'Iteration (\d+): non-finite loss or gradients \(l_pix=nan\); step skipped',
                          result.stderr)
    assert warnings == ['3']
    models = _experiment(tmp_path) / 'models'
    for name in ('net_g_2.pth', 'net_g_4.pth', 'net_g_6.pth', 'net_g_latest.pth'):
        checkpoint = _load(models / name)
        assert _all_finite(checkpoint['params']) and _all_finite(checkpoint['params_ema']), name
    assert not _same(_load(models / 'net_g_4.pth')['params'], _load(models / 'net_g_6.pth')['params'])


def test_a_stream_of_infinite_losses_stops_the_run_without_touching_weights_or_checkpoints(tiny_pairs, driver,
                                                                                           tmp_path):
    write_yaml(tmp_path / 'train.yml', _options(tiny_pairs, total_iter=20, save_every=2, max_nonfinite_steps=3,
                                                pixel_opt=_injected_loss(bad_from=3, value='inf')))
    result = _run(driver, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r'lksmn-train: error: 3 consecutive iterations \(3\.\.5\) had a non-finite loss or gradients '
                     r'\(train\.max_nonfinite_steps: 3\); stopping\. No non-finite weights were saved and the last '
                     r'checkpoint \(iteration 4\) is intact', result.stderr), result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    models, states = _experiment(tmp_path) / 'models', _experiment(tmp_path) / 'training_states'
    assert sorted(p.name for p in models.iterdir()) == ['net_g_2.pth', 'net_g_4.pth']
    good, during_stream = _load(models / 'net_g_2.pth'), _load(models / 'net_g_4.pth')
    assert _all_finite(good['params']) and _all_finite(good['params_ema'])
    # iterations 3 and 4 were skipped: no weight, EMA or optimizer change between the checkpoints
    assert _same(good['params'], during_stream['params']) and _same(good['params_ema'], during_stream['params_ema'])
    adam_2, adam_4 = (_load(states / f'{i}.state')['optimizers'][0]['state'] for i in (2, 4))
    assert all(_same(adam_2[k], adam_4[k]) for k in adam_2)


# --- disks that cannot be written -----------------------------------------------------------------------

def test_unwritable_experiments_folder_is_an_error_before_training(tiny_pairs, driver, tmp_path):
    write_yaml(tmp_path / 'train.yml', _options(tiny_pairs, total_iter=2, save_every=2))
    (tmp_path / 'experiments').write_text('a file where the experiments folder should be')
    result = _run(driver, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f'lksmn-train: error: cannot write to the experiments folder {tmp_path / "experiments"}' in result.stderr
    assert 'Traceback' not in result.stderr


def test_full_disk_at_a_save_stops_with_an_error_and_keeps_the_previous_checkpoint(tiny_pairs, driver, tmp_path):
    write_yaml(tmp_path / 'train.yml', _options(tiny_pairs, total_iter=6, save_every=2))
    # saves 1 and 2 (net_g_2.pth, 2.state) succeed; the disk is full from net_g_4.pth on
    result = _run(driver, tmp_path, env={'FAULT_FAIL_SAVE_FROM': '3'})
    assert result.returncode == 1, result.stderr[-3000:]
    models = _experiment(tmp_path) / 'models'
    assert (f'lksmn-train: error: could not save network weights to {models / "net_g_4.pth"} after 3 attempts '
            f'(OSError: [Errno 28] No space left on device)') in result.stderr
    assert 'Traceback' not in result.stderr
    assert _complete_checkpoints(tmp_path) == [2]
    assert not _temporaries(models) and not _temporaries(_experiment(tmp_path) / 'training_states')
    from lksmn_arch.training import resume
    assert resume.load_resume_state(_resume_options(tmp_path))['iter'] == 2


# --- distributed ----------------------------------------------------------------------------------------

def _worker_pids(launcher_pid: int) -> Dict[int, int]:
    """rank -> pid of the processes torchrun started."""
    ranks = {}
    for task in Path(f'/proc/{launcher_pid}/task').iterdir():
        for pid in (task / 'children').read_text().split():
            environ = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
            rank = [entry[len(b'RANK='):] for entry in environ if entry.startswith(b'RANK=')]
            if rank:
                ranks[int(rank[0])] = int(pid)
    return ranks


def _torchrun(workdir: Path, output, *args: str) -> subprocess.Popen:
    """``torchrun --nproc_per_node=2 -m lksmn_arch.cli.train -opt train.yml --launcher pytorch args``."""
    process = subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}', '-m',
         'lksmn_arch.cli.train', '-opt', 'train.yml', '--launcher', 'pytorch', *args],
        cwd=workdir, env=ENV, stdout=output, stderr=subprocess.STDOUT, text=True)
    _started.append(process)
    return process


def test_sigterm_to_one_rank_stops_all_ranks_at_the_same_iteration_with_rank_zero_saving(tiny_pairs, tmp_path):
    """Rank 1 alone gets SIGTERM; every rank stops at the same iteration k and exits with 143, also the rank
    that torchrun signals when the first one has exited (never -15), rank 0 saved k, and --auto_resume under
    torchrun continues with k + 1."""
    opt = _options(tiny_pairs, total_iter=100000, save_every=100000)
    opt['dist_params'] = {'backend': 'gloo'}
    # 3 pairs per rank in batches of 1: the iterations per epoch that BasicSR computes (it ignores drop_last)
    opt['datasets']['train']['batch_size_per_gpu'] = 1
    write_yaml(tmp_path / 'train.yml', opt)
    output_path = tmp_path / 'torchrun.out'
    with open(output_path, 'w') as output:
        launcher = _torchrun(tmp_path, output)
        deadline = time.monotonic() + 300
        while not any(int(i) >= 3 for i in LOGGED_ITER.findall(output_path.read_text())):
            assert launcher.poll() is None and time.monotonic() < deadline, output_path.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(_worker_pids(launcher.pid)[1], signal.SIGTERM)  # rank 1 only: rank 0 learns it from rank 1
        launcher.wait(300)  # a rank left waiting for the other would hang here
    text = output_path.read_text()
    stopped = re.search(r'Training stopped by SIGTERM at iteration (\d+) \(epoch (\d+)\)', text)
    assert stopped, text[-3000:]
    k, epoch = int(stopped.group(1)), int(stopped.group(2))
    ranks = re.findall(r'Rank (\d+): stopped at iteration (\d+); exit status (\d+)\.', text)
    assert sorted(ranks) == [('0', str(k), '143'), ('1', str(k), '143')], text[-3000:]
    # what torchrun saw: every rank it reports exited with 143 itself, none was killed by its SIGTERM
    exit_codes = re.findall(r'exitcode\s*:\s*(-?\d+)', text)
    assert exit_codes and set(exit_codes) == {str(128 + signal.SIGTERM)}, text[-3000:]
    assert 'Signal 15 (SIGTERM) received by PID' not in text, text[-3000:]
    experiment = _experiment(tmp_path)
    assert [p.name for p in (experiment / 'training_states').iterdir()] == [f'{k}.state']
    assert _load(experiment / 'training_states' / f'{k}.state')['iter'] == k
    assert (experiment / 'models' / f'net_g_{k}.pth').is_file()

    resumed_path = tmp_path / 'resumed.out'
    with open(resumed_path, 'w') as output:
        launcher = _torchrun(tmp_path, output, '--auto_resume', '--force_yml', f'train:total_iter={k + 2}',
                             f'logger:save_checkpoint_freq={k + 2}')
        assert launcher.wait(300) == 0, resumed_path.read_text()[-3000:]
    text = resumed_path.read_text()
    assert f'Resuming training from epoch: {epoch}, iter: {k}.' in text, text[-3000:]
    assert [int(i) for i in LOGGED_ITER.findall(text)] == [k + 1, k + 2], text[-3000:]
    assert _load(experiment / 'training_states' / f'{k + 2}.state')['iter'] == k + 2
