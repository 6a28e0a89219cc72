"""A run that fails (any exception inside BasicSR's training loop, Ctrl-C during start-up) ends promptly: one
line on stderr, a non-zero exit status, no DataLoader worker or thread left to keep the process alive.

The process-level cases run ``lksmn-train`` in a subprocess (a driver that registers a loss failing at its second
call) with DataLoader workers; their time limits are generous, as the machines that run the suite are loaded: what
is tested is that the process ends by itself, not how fast.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import paired_dataset_options, training_options, write_yaml
from lksmn_arch.training import pipeline

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
LIMIT_S = 300  # the run itself takes seconds; before the fix it never ended

DRIVER = '''"""lksmn-train with a loss that fails at its second call; FAILURE_MODE picks how the run is started."""
import os
import sys
import threading
import time

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch.nn import functional as F


@LOSS_REGISTRY.register()
class FailingL1Loss(torch.nn.Module):
    def __init__(self, loss_weight=1.0, reduction='mean', fail_at=2):
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, pred, target):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError(f'injected failure at call {self.calls}')
        return F.l1_loss(pred, target)


mode = os.environ['FAILURE_MODE']
if mode == 'thread-left-behind':  # a non-daemon thread that nothing will ever join
    threading.Thread(target=time.sleep, args=(3600,), name='left-behind').start()
if mode == 'uncaught':  # run_training called by a script of its own, not through lksmn-train's cli
    from lksmn_arch.training.pipeline import run_training
    run_training(sys.argv[1:])
else:
    from lksmn_arch.cli.train import main
    sys.exit(main())
'''


@pytest.fixture(scope='module')
def failing_run(tiny_pairs, tmp_path_factory) -> Path:
    """A folder with the driver and an option file whose training fails at iteration 2, with 2 DataLoader workers
    (the case that used to hang: the workers ignore SIGTERM, so multiprocessing's exit handler waited for them)."""
    folder = tmp_path_factory.mktemp('failing_run')
    (folder / 'driver.py').write_text(DRIVER)
    train = paired_dataset_options('train', tiny_pairs['train_gt'], tiny_pairs['train_lq'], 'train')
    train['num_worker_per_gpu'] = 2
    opt = training_options('fails', train, None, total_iter=20, save_every=10)
    opt['train']['pixel_opt'] = {'type': 'FailingL1Loss', 'fail_at': 2}
    write_yaml(folder / 'train.yml', opt)
    return folder


def _process_group_gone(pgid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize('mode', ['cli', 'thread-left-behind', 'uncaught'])
def test_an_error_inside_the_training_loop_ends_the_process_and_its_workers(failing_run, tmp_path, mode):
    workdir = tmp_path / mode
    workdir.mkdir()
    for name in ('driver.py', 'train.yml'):
        (workdir / name).write_text((failing_run / name).read_text())
    process = subprocess.Popen([sys.executable, 'driver.py', '-opt', 'train.yml'], cwd=workdir,
                               env={**ENV, 'FAILURE_MODE': mode}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _, err = process.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        pytest.fail(f'lksmn-train ({mode}) was still running {LIMIT_S} s after its training loop failed:\n{err[-3000:]}')
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1, err[-3000:]
    assert _process_group_gone(process.pid), 'DataLoader workers outlived the failed run'
    last = err.strip().splitlines()[-1]
    if mode == 'uncaught':  # Python's own report of the exception; what matters is that the process ended
        assert last == 'RuntimeError: injected failure at call 2', err[-3000:]
        return
    assert 'Traceback' not in err, err[-3000:]
    logs = sorted((workdir / 'experiments' / 'fails').glob('train_*.log'))
    assert last == (f'lksmn-train: error: the run failed: RuntimeError: injected failure at call 2; the traceback is '
                    f'in {logs[-1]}'), err[-3000:]
    assert 'Traceback (most recent call last)' in logs[-1].read_text()


@pytest.fixture
def no_run_log(monkeypatch):
    """In-process: no log file of an earlier run in this test process (BasicSR keeps its logger's first file)."""
    monkeypatch.setattr(pipeline, '_log_files', lambda: [])
    monkeypatch.setattr(pipeline, '_record_traceback', lambda error: None)


def _fails_with(error: BaseException):
    def runner(argv, prog):
        raise error
    return runner


def test_ctrl_c_during_start_up_is_one_line_and_status_130(capsys):
    assert pipeline.cli(_fails_with(KeyboardInterrupt()), 'lksmn-train', ['-opt', 'x.yml']) == 130
    err = capsys.readouterr().err
    assert err.strip() == 'lksmn-train: interrupted (Ctrl-C); checkpoints saved before it are kept'


def test_ctrl_c_while_the_option_file_is_checked_is_one_line_and_status_130(tmp_path, monkeypatch, capsys):
    from lksmn_arch.cli import train as train_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, 'check_options', interrupted)
    option_file = write_yaml(tmp_path / 'train.yml', {'name': 'x'})
    assert train_cli.main(['-opt', str(option_file)]) == 130
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_any_failure_of_a_run_is_one_line_with_status_1(capsys, no_run_log):
    assert pipeline.cli(_fails_with(ZeroDivisionError('integer modulo by zero')), 'lksmn-train', []) == 1
    err = capsys.readouterr().err
    assert err.strip() == ('lksmn-train: error: the run failed: ZeroDivisionError: integer modulo by zero; --debug '
                           'shows the traceback')


def test_a_dataloader_worker_error_is_reported_by_its_original_line(capsys, no_run_log):
    wrapped = ValueError('Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call '
                         'last):\n  File "x.py", line 1, in f\nlksmn_arch.data.dataset_checks.DatasetError: dataset '
                         'train: cannot load sample 003.png')
    assert pipeline.cli(_fails_with(wrapped), 'lksmn-test', []) == 1
    assert 'the run failed: DatasetError: dataset train: cannot load sample 003.png' in capsys.readouterr().err


def test_debug_shows_the_traceback_of_a_failed_run(capsys, no_run_log):
    assert pipeline.cli(_fails_with(RuntimeError('boom')), 'lksmn-train', ['-opt', 'x.yml', '--debug']) == 1
    err = capsys.readouterr().err
    assert 'Traceback (most recent call last)' in err
    assert err.strip().splitlines()[-1] == 'lksmn-train: error: the run failed: RuntimeError: boom'


def test_ctrl_c_while_torch_and_basicsr_load_is_one_line_and_status_130(monkeypatch, capsys):
    from lksmn_arch.cli import test as test_cli
    from lksmn_arch.cli import train as train_cli

    class InterruptedImport:
        """Ctrl-C in the seconds the pipeline's import (torch, BasicSR) takes."""

        def find_spec(self, name, path=None, target=None):
            if name == 'lksmn_arch.training.pipeline':
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, 'lksmn_arch.training.pipeline')
    monkeypatch.setattr(sys, 'meta_path', [InterruptedImport()] + sys.meta_path)
    for command, main in (('lksmn-train', train_cli.main), ('lksmn-test', test_cli.main)):
        assert main(['-opt', 'x.yml']) == 130
        assert capsys.readouterr().err.strip() == f'{command}: interrupted while starting; nothing was written'
