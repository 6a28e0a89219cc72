"""``LKSMNModel``: BasicSR's SRModel made safe to interrupt, resume and feed untrusted files.

On top of ``SRModel`` (same option keys, same files, same checkpoint formats):

* checkpoints are read with weights-only loading (``resume.load_trusted``): pickled code is refused;
* ``net_g_<iter>.pth`` and ``training_states/<iter>.state`` are written atomically (``atomic.atomic_save``),
  and a save that fails stops the run with ``CheckpointSaveError`` instead of BasicSR's "Just ignore it";
* the models and training-states folders are checked writable when training starts;
* an iteration whose loss or gradients are not finite changes nothing (no optimizer step, no EMA update, and
  the statistics its forward pass updated, such as BatchNorm's, are put back) and is logged;
  ``train.max_nonfinite_steps`` (default 20) consecutive ones stop the run with ``NonFiniteLossError``;
  non-finite weights are never saved;
* SIGTERM or SIGINT during training: the current iteration finishes, a training state and ``net_g`` are
  saved for it and the process exits with status 128 + signal number (143 for SIGTERM, 130 for SIGINT),
  saying how to resume; a second signal exits at once without saving, and any signal after the save ends the
  process at once with that status (``lksmn-train`` then exits through ``exit_after_stop``, not through an
  interpreter shutdown that would drop the handler). ``lksmn-train`` also makes BasicSR's
  DataLoader workers ignore these signals (``shield_dataloader_workers``), so that a signal sent to the whole
  process group (Slurm, Ctrl-C) reaches the trainer instead of killing its workers.
* a run that fails (any exception) does not hang on those shielded workers, which ignore the SIGTERM that
  multiprocessing's exit handler sends before it waits for them: ``stop_dataloader_workers`` ends them (at
  interpreter exit too), and ``lksmn-train`` ends a failed run through ``end_failed_run``, which also keeps
  threads left behind from holding the process.

Distributed runs: the ranks agree each iteration (one all-reduce of two numbers) on skipping a non-finite
step and on stopping, so a signal to any rank (or to all, as torchrun forwards its own SIGTERM) stops every
rank at the same iteration; rank 0 saves while the others wait at a barrier, then each rank prints
``Rank <r>: stopped at iteration <k>; exit status <s>.`` and exits with 128 + signal, also when the launcher's
SIGTERM (sent to the other ranks once the first has exited) reaches it first.
Too many non-finite steps stop every rank together. A failed save raises on rank 0 only (BasicSR's
``master_only``); the other ranks then block in the next collective until the launcher ends them, which
torchrun does when rank 0 exits.
"""
import atexit
import gc
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Tuple

import torch
import basicsr.data
from basicsr.data import worker_init_fn as _basicsr_worker_init_fn
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY

from lksmn_arch.training import resume
from lksmn_arch.utils.atomic import atomic_save, check_writable, remove_stale_temporaries
from lksmn_arch.utils.checkpoint import CheckpointError, check_weights
from lksmn_arch.archs.lksmn_arch import set_lkcd_depthwise_fp32
from lksmn_arch.models.patch_schedule import crop_batch, lr_patch_at, read_patch_schedule
from lksmn_arch.models.training_path import network_step_timer, path_is_timed, training_path
from lksmn_arch.training.resume import TrainingError, load_trusted

DEFAULT_MAX_NONFINITE_STEPS = 20
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
WORKER_GRACE_S = 2.0  # a terminated DataLoader worker that is still alive after this is killed
THREAD_GRACE_S = 3.0  # after a failure, how long the command waits for non-daemon threads the run left
EXIT_WATCHDOG_S = 60.0  # after a failure, the longest the command's interpreter shutdown may take


def check_nonfinite_limit(train_opt: Dict[str, Any]) -> int:
    """``train.max_nonfinite_steps`` (default 20), checked: a whole number >= 1; ``TrainingError`` otherwise."""
    value = train_opt.get('max_nonfinite_steps', DEFAULT_MAX_NONFINITE_STEPS)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value) or value < 1):
        raise TrainingError(f'train.max_nonfinite_steps must be a whole number >= 1, got {value!r}')
    return int(value)


class NonFiniteLossError(TrainingError):
    """Too many consecutive iterations with a NaN/Inf loss, or weights that are no longer finite."""


class TrainingInterrupted(SystemExit):
    """Training stopped on SIGTERM/SIGINT after saving; exit status 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


# --- signals: the handler only records the request; the model acts on it after an iteration ---------
#
# Once the stop's checkpoint is written, the process must end with 128 + signal whatever else happens:
# under torchrun the first rank to exit makes the launcher send SIGTERM to the others. Python removes its
# signal handlers while the interpreter shuts down (hundreds of milliseconds with torch loaded), so a rank
# still shutting down would die of that SIGTERM (-15). Hence the handler stays installed after the stop,
# ends the process at once with the stop's status, and ``lksmn-train`` ends a stopped run with
# ``exit_after_stop`` (``os._exit``) instead of a normal interpreter shutdown.

_stop_signal: Optional[int] = None
_exit_status: Optional[int] = None  # set once the stop's checkpoint is written: any signal ends the process
_exit_note = b''  # what the process still has to say if a signal ends it before it says so itself
_handler_pid: Optional[int] = None
_previous_handlers: Dict[int, Any] = {}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f'signal {signum}'


def _on_stop_signal(signum: int, frame: Any) -> None:
    """Record the first signal; exit at once on the second, or on any once the stop is saved.
    Does nothing in forked DataLoader workers."""
    global _stop_signal
    if os.getpid() != _handler_pid:
        return  # a DataLoader worker forked from the trainer: the main process stops it when it exits
    if _exit_status is not None:  # saved: e.g. torchrun stopping the other ranks once one has exited
        if _exit_note:
            os.write(2, _exit_note)
        os._exit(_exit_status)
    name = _signal_name(signum)
    if _stop_signal is not None:
        os.write(2, f'\nReceived {name} again: exiting now without saving (the last complete checkpoint is '
                    f'kept).\n'.encode())
        os._exit(128 + signum)
    _stop_signal = signum
    os.write(2, f'\nReceived {name}: saving a training state after the current iteration, then stopping '
                f'(send it again to exit at once without saving).\n'.encode())


def install_signal_handlers() -> bool:
    """Route SIGTERM/SIGINT to the save-and-stop handler; False where that is impossible (not the main thread)."""
    global _handler_pid, _stop_signal, _exit_status, _exit_note
    if threading.current_thread() is not threading.main_thread():
        return False
    _stop_signal, _exit_status, _exit_note = None, None, b''
    _handler_pid = os.getpid()
    for signum in STOP_SIGNALS:
        previous = signal.signal(signum, _on_stop_signal)
        if previous is not _on_stop_signal:
            _previous_handlers[signum] = previous
    return True


def uninstall_signal_handlers() -> None:
    """Give SIGTERM/SIGINT back to the handlers they had before ``install_signal_handlers``."""
    global _handler_pid, _stop_signal, _exit_status, _exit_note
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_previous_handlers.items()):
        signal.signal(signum, previous)
        del _previous_handlers[signum]
    _handler_pid = None
    _stop_signal, _exit_status, _exit_note = None, None, b''


def _live_dataloader_iterators() -> List[Any]:
    """The multi-process DataLoader iterators still referenced in this process (by a traceback, say)."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter
    # type(), not isinstance(): isinstance reads __class__, which some of torch's objects answer with a warning
    return [obj for obj in gc.get_objects() if issubclass(type(obj), _MultiProcessingDataLoaderIter)]


def stop_dataloader_workers(grace: float = WORKER_GRACE_S, every_daemon: bool = True) -> None:
    """End the DataLoader workers a finished or failed run left behind, so that nothing waits for them.

    Collects garbage first (the iterators of an unwound training loop shut their workers down, as torch does)
    and shuts down the iterators still referenced (by an uncaught exception's traceback, say) the same way;
    then terminates the workers still alive and kills those that outlive ``grace`` seconds, with torch's
    SIGCHLD check (which raises when a worker dies) set aside meanwhile. Shielded workers ignore SIGTERM, so
    multiprocessing's own exit handler (terminate, then join without a time limit) would wait for them for ever.
    ``every_daemon``: all daemonic child processes, which are what multiprocessing terminates at exit (for a
    process about to end); else only the workers of the DataLoader iterators found."""
    gc.collect()
    if not any(child.daemon for child in multiprocessing.active_children()):
        return  # the usual case: no scan of the heap
    iterators = _live_dataloader_iterators()
    workers = [worker for iterator in iterators for worker in getattr(iterator, '_workers', ())]
    for iterator in iterators:
        try:
            iterator._shutdown_workers()  # torch's own: a None to each worker, which then exits
        except Exception:  # noqa: BLE001  (best effort: what is left is killed below)
            pass
    alive = set(multiprocessing.active_children())
    children = [child for child in alive if child.daemon] if every_daemon else [w for w in workers if w in alive]
    if not children:
        return
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL) if in_main else None
    try:
        for child in children:
            child.terminate()
        deadline = time.monotonic() + grace
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join(5)
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGCHLD, previous)


def _flush_all() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def exit_after_stop(status: int) -> NoReturn:
    """End a process whose training stopped on a signal (checkpoint saved) with ``status``, without the
    interpreter shutdown during which a further signal (torchrun's SIGTERM to the ranks still running)
    would kill it: finish DataLoader workers, flush the logs and standard streams, ``os._exit``. The
    handler stays installed until then, so a signal meanwhile ends the process with the same status."""
    stop_dataloader_workers(grace=0.0)  # workers left over ignore SIGTERM (shielded): killed at once
    _flush_all()
    os._exit(status)


def end_failed_run(status: int, own_process: bool) -> None:
    """Clean up after a run that failed (an exception, Ctrl-C): stop its DataLoader workers and give
    SIGTERM/SIGINT back their usual meaning. With ``own_process`` (the command line owns the process, which ends
    right after), make sure it does end with ``status``: non-daemon threads the run left behind are given
    ``THREAD_GRACE_S`` seconds, then the process exits at once; otherwise a watchdog ends it if the interpreter's
    shutdown (exit handlers, threads started meanwhile) still runs ``EXIT_WATCHDOG_S`` seconds later."""
    stop_dataloader_workers(every_daemon=own_process)
    uninstall_signal_handlers()
    if not own_process:
        return
    main = threading.main_thread()
    others = [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
    deadline = time.monotonic() + THREAD_GRACE_S
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in others):  # nothing will ever join them: exit without waiting
        _flush_all()
        os._exit(status)

    def watchdog() -> None:
        time.sleep(EXIT_WATCHDOG_S)
        os.write(2, f'(the process did not end {EXIT_WATCHDOG_S} s after the failure; exiting now)\n'.encode())
        os._exit(status)

    threading.Thread(target=watchdog, name='lksmn-exit-watchdog', daemon=True).start()


def _shielded_worker_init_fn(worker_id: int, num_workers: int, rank: int, seed: int) -> None:
    """BasicSR's DataLoader worker setup, plus: the worker ignores SIGTERM/SIGINT."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    _basicsr_worker_init_fn(worker_id, num_workers=num_workers, rank=rank, seed=seed)


def shield_dataloader_workers() -> None:
    """Make the DataLoader workers that ``basicsr.data.build_dataloader`` builds from now on ignore
    SIGTERM/SIGINT. Schedulers (Slurm) and Ctrl-C signal the whole process group; torch's workers die on
    SIGTERM (and quit on SIGINT), and the trainer would then fail with "DataLoader worker is killed" before
    it could save. Shielded workers keep serving batches; they still exit when the trainer does (torch
    shuts them down, or its watchdog notices the parent is gone; at interpreter exit, ``stop_dataloader_workers``
    ends those still alive, which multiprocessing's exit handler could not). Call before the dataloaders are
    built."""
    global _workers_stopped_at_exit
    basicsr.data.worker_init_fn = _shielded_worker_init_fn
    if not _workers_stopped_at_exit:  # registered after multiprocessing's exit handler, so it runs first
        atexit.register(stop_dataloader_workers)
        _workers_stopped_at_exit = True


_workers_stopped_at_exit = False


# --- epochs: BasicSR passes the epoch to the sampler, not to the model --------------------------------

_sampler_epoch: Optional[int] = None


def _track_sampler_epochs() -> None:
    """Wrap ``EnlargedSampler.set_epoch`` (called by BasicSR's loop at each epoch start) to record the epoch."""
    original = EnlargedSampler.set_epoch
    if getattr(original, '_lksmn_records_epoch', False):
        return

    def set_epoch(self: EnlargedSampler, epoch: int) -> None:
        global _sampler_epoch
        original(self, epoch)
        _sampler_epoch = epoch

    set_epoch._lksmn_records_epoch = True
    EnlargedSampler.set_epoch = set_epoch


def _resume_command() -> str:
    argv = sys.argv
    opt_path = argv[argv.index('-opt') + 1] if '-opt' in argv[:-1] else 'OPT.yml'
    program = os.path.basename(argv[0]) if argv else ''
    command = 'lksmn-train' if program == 'lksmn-train' else f'{Path(sys.executable).name} {argv[0]}'
    return f'{command} -opt {opt_path} --auto_resume'


def _write_to_log_files(logger: logging.Logger, warnings: List[str]) -> None:
    """Add ``warnings`` to the logger's files only (they were shown on the console when they happened)."""
    for message in warnings:
        record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, None, None)
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)


def _first_mismatch(message: str) -> str:
    """The first useful line of ``load_state_dict``'s error (a size mismatch or the missing keys)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1:  # the first line only says "Error(s) in loading state_dict for LKSMN:"
        return lines[1].rstrip('.')
    return lines[0] if lines else 'unknown difference'


def _all_finite(tensors: List[torch.Tensor]) -> torch.Tensor:
    """One boolean tensor (no device sync): every value of every tensor is finite."""
    if not tensors:
        return torch.tensor(True)
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


@MODEL_REGISTRY.register()
class LKSMNModel(SRModel):
    """SRModel for LKSMN. Option keys and file layout are BasicSR's, so ``model_type: SRModel`` option
    files only need the type changed. Adds options ``train.max_nonfinite_steps`` (default 20), ``train.precision``,
    ``train.channels_last``, ``train.lkcd_depthwise_fp32`` and ``train.progressive_patches``."""

    def __init__(self, opt: Dict[str, Any]) -> None:
        self._channels_last, self._autocast_dtype = False, None
        self._grad_scaler: Optional[torch.amp.GradScaler] = None
        if opt.get('is_train') and isinstance(opt.get('train'), dict):
            # the layout (and the options' check) before BasicSR builds and moves the network; the rest is final
            # once the network exists (_final_path)
            device_type = 'cuda' if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available() else 'cpu'
            self._channels_last, self._autocast_dtype = training_path(opt['train'], device_type)[:2]
            if self._autocast_dtype == torch.float16:  # fp16 gradients underflow without loss scaling
                self._grad_scaler = torch.amp.GradScaler(device_type)
        self._patch_stages = read_patch_schedule(opt) if opt.get('is_train') else []
        self._iteration = 0  # the iteration BasicSR's loop is on (update_learning_rate tells it)
        self._lr_patch: Optional[int] = None  # the progressive stage's LR patch last used
        self._validating = False
        self._nonfinite_steps = 0
        self.skipped_steps = 0  # every step skipped as non-finite so far (the scaler's own skips not counted)
        self._epoch: int = 0  # the last epoch BasicSR told the model (resume state or save); 0 if none yet
        self._last_checkpoint: Optional[int] = None
        self._not_loaded: Dict[int, List[str]] = {}  # id(network) -> its weights a non-strict load left out
        super().__init__(opt)
        if not self.is_train:
            return
        path_lines: List[str] = []
        if isinstance(opt.get('train'), dict):
            self._autocast_dtype, path_lines = self._final_path(opt['train'])
        logger = get_root_logger()
        for line in path_lines:
            logger.info(line)
        _write_to_log_files(logger, resume.pending_warnings)  # resume fallbacks, already on the console
        resume.pending_warnings.clear()
        if self.opt.get('rank', 0) == 0:
            for key in ('models', 'training_states'):
                folder = self.opt['path'].get(key)
                if folder:
                    check_writable(folder, f'{key.replace("_", " ")} folder')
                    for path in remove_stale_temporaries(folder):
                        logger.info(f'Removed {path}, left by an interrupted save.')
        global _sampler_epoch
        _sampler_epoch = None
        _track_sampler_epochs()
        if not install_signal_handlers():
            logger.warning('Not in the main thread: SIGTERM/SIGINT will not save a training state before exiting.')

    def _final_path(self, train_opt: Dict[str, Any]) -> Tuple[Optional[torch.dtype], List[str]]:
        """The autocast dtype and the lines to log; whether LKCD's depthwise convs stay fp32 under it is set on
        net_g here. On a CPU with native bf16, with options at auto, the path is whichever a few timed steps of this
        network at the training batch shape say is fastest (``training_path``)."""
        net = self.get_bare_model(self.net_g)
        network_has_lkcd = set_lkcd_depthwise_fp32(net, False) > 0
        timer = None
        if path_is_timed(train_opt, self.device.type, network_has_lkcd):
            train_set = (self.opt.get('datasets') or {}).get('train') or {}
            batch_size = int(train_set.get('batch_size_per_gpu') or 8)
            lr_patch = max(1, int(train_set.get('gt_size') or 16 * self.opt['scale']) // self.opt['scale'])
            if self._patch_stages:  # timed at the first stage's patches
                lr_patch = self._patch_stages[0][1]
            timer = network_step_timer(net, batch_size, lr_patch, self.opt['scale'], self._channels_last, self.device)
        path = training_path(train_opt, self.device.type, timer, network_has_lkcd)
        set_lkcd_depthwise_fp32(net, path.lkcd_depthwise_fp32)
        return path.autocast_dtype, path.lines

    def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
        """BaseModel's, with the weights put in channels_last first when training on that path."""
        if self._channels_last:
            net = net.to(memory_format=torch.channels_last)
        return super().model_to_device(net)

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        """BaseModel's, remembering the iteration: BasicSR's loop calls this just before each batch's feed_data."""
        self._iteration = current_iter
        super().update_learning_rate(current_iter, warmup_iter)

    def feed_data(self, data: Dict[str, Any]) -> None:
        """SRModel's; a training batch cropped to the progressive stage's patches, and in channels_last on that
        path."""
        super().feed_data(data)
        if not (self.is_train and self.net_g.training and not self._validating):
            return
        if self._patch_stages and hasattr(self, 'gt'):
            lr_patch = lr_patch_at(self._patch_stages, self._iteration)
            if lr_patch != self._lr_patch:
                get_root_logger().info(f'Progressive patches: LR patches of {lr_patch}x{lr_patch} from iteration '
                                       f'{self._iteration}.')
                self._lr_patch = lr_patch
            self.lq, self.gt = crop_batch(self.lq, self.gt, lr_patch, self.opt['scale'])
        if self._channels_last:
            self.lq = self.lq.contiguous(memory_format=torch.channels_last)

    def validation(self, dataloader: Any, current_iter: int, tb_logger: Any, save_img: bool = False) -> None:
        """BaseModel's, with the training batch's handling (crops, layout) off for the validation images."""
        self._validating = True
        try:
            super().validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            self._validating = False

    def init_training_settings(self) -> None:
        """SRModel's, plus ``train.max_nonfinite_steps``; and an EMA network that starts as net_g where a
        non-strict pretrained load left weights out (an x4 body fine-tuned at x2: the upsampler). SRModel
        builds net_g_ema with its own random initialisation of those weights, so that the EMA would average
        two unrelated upsamplers for thousands of iterations (validated PSNR below bicubic)."""
        self.max_nonfinite_steps = check_nonfinite_limit(self.opt['train'])
        super().init_training_settings()
        ema = getattr(self, 'net_g_ema', None)
        left_out = self._not_loaded.get(id(self.get_bare_model(ema))) if ema is not None else None
        if left_out:
            source = self.get_bare_model(self.net_g).state_dict()
            target = self.get_bare_model(ema).state_dict()
            with torch.no_grad():
                for key in left_out:
                    target[key].copy_(source[key])
            get_root_logger().info(f'EMA: {len(left_out)} weights not in the pretrained file ({", ".join(left_out[:4])}'
                                   f'{", ..." if len(left_out) > 4 else ""}) start as net_g\'s.')

    def setup_optimizers(self) -> None:
        """SRModel's, without a "will not be optimized" warning for LKSMN's BatchNorm statistics: they are frozen
        parameters by design (so that EMA averages them). Other frozen parameters are still named."""
        from lksmn_arch.archs.lksmn_arch import BatchNorm2d
        statistics = {id(p) for m in self.net_g.modules() if isinstance(m, BatchNorm2d)
                      for p in (m.running_mean, m.running_var)}
        frozen = [k for k, v in self.net_g.named_parameters() if not v.requires_grad and id(v) not in statistics]
        for name in frozen:
            get_root_logger().warning(f'Params {name} will not be optimized.')
        train_opt = self.opt['train']
        optim_type = train_opt['optim_g'].pop('type')
        self.optimizer_g = self.get_optimizer(optim_type, [v for v in self.net_g.parameters() if v.requires_grad],
                                              **train_opt['optim_g'])
        self.optimizers.append(self.optimizer_g)

    # --- loading ---------------------------------------------------------------------------------------

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """As BasicSR's, but the file is read with weights-only loading (refusing pickled code), a bare state dict
        is taken as it is, and weights that do not fit the network or are not finite are refused in one line."""
        logger = get_root_logger()
        net = self.get_bare_model(net)
        checkpoint = load_trusted(load_path)
        if not isinstance(checkpoint, dict):
            raise TrainingError(f'{load_path} holds no state dict ({type(checkpoint).__name__})')
        if (param_key is not None and param_key in checkpoint) or 'params' in checkpoint:
            if param_key not in checkpoint:
                logger.info(f'Loading: {param_key} does not exist in {load_path}, use params.')
                param_key = 'params'
            checkpoint = checkpoint[param_key]
        elif checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            logger.info(f'Loading: {load_path} is a bare state dict (no {param_key!r} key); using it as it is.')
            param_key = None
        else:
            keys = ', '.join(map(repr, list(checkpoint)[:6])) or 'none'
            raise TrainingError(f'{load_path} has no {param_key!r} or "params" weights (keys: {keys})')
        logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
        for key in list(checkpoint):
            if key.startswith('module.'):
                checkpoint[key[len('module.'):]] = checkpoint.pop(key)
        try:
            check_weights(checkpoint, load_path)
        except CheckpointError as error:
            raise TrainingError(str(error)) from None
        self._print_different_keys_loading(net, checkpoint, strict)  # renames keys of other shapes to *.ignore
        self._not_loaded[id(net)] = sorted(set(net.state_dict()) - set(checkpoint))
        try:
            net.load_state_dict(checkpoint, strict=strict)
        except RuntimeError as error:
            raise TrainingError(f'{load_path} does not fit network_g ({type(net).__name__}): '
                                f'{_first_mismatch(str(error))}. Is it a checkpoint of another network or '
                                'network size?') from None

    def resume_training(self, resume_state: Dict[str, Any]) -> None:
        """BasicSR's, remembering the state's epoch and iteration, and the fp16 loss scale where the state holds one
        and this run scales its loss (a state saved on another path leaves the scaler at its default)."""
        super().resume_training(resume_state)
        self._epoch = resume_state['epoch']
        self._last_checkpoint = resume_state['iter']
        if self._grad_scaler is not None and resume_state.get('grad_scaler'):
            self._grad_scaler.load_state_dict(resume_state['grad_scaler'])

    # --- one training step -----------------------------------------------------------------------------

    def optimize_parameters(self, current_iter: int) -> None:
        """SRModel's step, skipped when the loss or a gradient is not finite; stops on a recorded signal."""
        self.optimizer_g.zero_grad()
        forward_state = self._forward_state()
        with torch.autocast(self.device.type, dtype=self._autocast_dtype or torch.float32,
                            enabled=self._autocast_dtype is not None):
            self.output = self.net_g(self.lq)
        self.output = self.output.float()  # the losses in fp32

        l_total = 0
        loss_dict = OrderedDict()
        if self.cri_pix:
            l_pix = self.cri_pix(self.output, self.gt)
            l_total += l_pix
            loss_dict['l_pix'] = l_pix
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            if l_percep is not None:
                l_total += l_percep
                loss_dict['l_percep'] = l_percep
            if l_style is not None:
                l_total += l_style
                loss_dict['l_style'] = l_style

        scaler = self._grad_scaler
        # always backward: in DDP every rank must join the gradient all-reduce
        (scaler.scale(l_total) if scaler else l_total).backward()
        if scaler:
            scaler.unscale_(self.optimizer_g)
        grads = [p.grad for p in self.net_g.parameters() if p.grad is not None]
        grads_finite = bool(_all_finite(grads))
        finite = bool(torch.isfinite(l_total.detach()).all()) and (grads_finite or scaler is not None)
        skip, signum = self._agree(not finite, _stop_signal)

        if skip:
            self.optimizer_g.zero_grad(set_to_none=True)
            self._restore_forward_state(forward_state)
            if scaler:
                scaler.update()
        elif scaler:
            # fp16: gradients that overflowed at this loss scale are the scaler's business, not a fault: it
            # skips the step and halves the scale; the whole step is undone then, as a skipped step is
            scaler.step(self.optimizer_g)
            scaler.update()
            if not grads_finite:
                self._restore_forward_state(forward_state)
            elif self.ema_decay > 0:
                self.model_ema(decay=self.ema_decay)
        else:
            self.optimizer_g.step()
            if self.ema_decay > 0:
                self.model_ema(decay=self.ema_decay)

        self.log_dict = self.reduce_loss_dict(loss_dict)
        if skip:
            self._skipped(current_iter)
        else:
            self._nonfinite_steps = 0
        if signum:
            self._save_and_stop(current_iter, signum)

    def _forward_state(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(tensor, copy) for what the forward pass itself may change: buffers and parameters that take no
        gradient, such as BatchNorm running statistics (LKSMN keeps them as frozen parameters for EMA)."""
        net = self.get_bare_model(self.net_g)
        tensors = [*net.buffers(), *(p for p in net.parameters() if not p.requires_grad)]
        return [(t, t.detach().clone()) for t in tensors]

    @staticmethod
    def _restore_forward_state(state: List[Tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Undo what the forward pass of a skipped step changed (statistics that may now hold NaN/Inf)."""
        with torch.no_grad():
            for tensor, saved in state:
                tensor.copy_(saved)

    def _agree(self, skip: bool, signum: Optional[int]) -> Tuple[bool, Optional[int]]:
        """In distributed runs, skip if any rank saw a non-finite value; stop if any rank got a signal."""
        if not self.opt.get('dist'):
            return skip, signum
        flags = torch.tensor([float(skip), float(signum or 0)], device=self.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return bool(flags[0] > 0), int(flags[1]) or None

    def _skipped(self, current_iter: int) -> None:
        self._nonfinite_steps += 1
        self.skipped_steps += 1
        losses = ', '.join(f'{k}={v:.4g}' for k, v in self.log_dict.items())
        get_root_logger().warning(
            f'Iteration {current_iter}: non-finite loss or gradients ({losses}); step skipped, weights, '
            f'optimizer and EMA unchanged ({self._nonfinite_steps} in a row; the run stops at '
            f'{self.max_nonfinite_steps}, train.max_nonfinite_steps).')
        if self._nonfinite_steps >= self.max_nonfinite_steps:
            first = current_iter - self._nonfinite_steps + 1
            kept = (f'the last checkpoint (iteration {self._last_checkpoint}) is intact'
                    if self._last_checkpoint is not None else 'no checkpoint was saved in this run')
            message = (f'{self._nonfinite_steps} consecutive iterations ({first}..{current_iter}) had a non-finite '
                       f'loss or gradients (train.max_nonfinite_steps: {self.max_nonfinite_steps}); stopping. '
                       f'No non-finite weights were saved and {kept}. Lower the learning rate or check the '
                       f'data, then resume with --auto_resume.')
            get_root_logger().error(message)
            raise NonFiniteLossError(message)

    def _save_and_stop(self, current_iter: int, signum: int) -> None:
        logger = get_root_logger()
        name = _signal_name(signum)
        epoch = _sampler_epoch if _sampler_epoch is not None else self._epoch
        logger.warning(f'{name} received: saving models and training state at iteration {current_iter}.')
        self.save(epoch, current_iter)
        if self.opt.get('dist'):
            torch.distributed.barrier()  # rank 0 has written before any rank exits
        status, rank, dist = 128 + signum, self.opt.get('rank', 0), bool(self.opt.get('dist'))
        message = None
        if rank == 0:
            models, states = Path(self.opt['path']['models']), Path(self.opt['path']['training_states'])
            message = (f'Training stopped by {name} at iteration {current_iter} (epoch {epoch}): saved '
                       f'{models / f"net_g_{current_iter}.pth"} and {states / f"{current_iter}.state"}. '
                       f'Resume with: {_resume_command()}{" (under the same launcher)" if dist else ""}')
        # one line per rank (BasicSR's logger shows rank 0 only), so that a distributed stop can be checked
        rank_line = f'Rank {rank}: stopped at iteration {current_iter}; exit status {status}.\n' if dist else ''
        # From here a signal (the launcher's SIGTERM once another rank has exited) ends the process at once
        # with the stop's status, saying first what this process has not said yet.
        global _exit_status, _exit_note
        _exit_note = (f'{message}\n' if message else '').encode() + rank_line.encode()
        _exit_status = status
        if message:
            logger.info(message)
        _exit_note = rank_line.encode()
        if rank_line:
            os.write(2, _exit_note)
        _exit_note = b''
        raise TrainingInterrupted(signum)

    # --- saving ----------------------------------------------------------------------------------------

    def save(self, epoch: int, current_iter: int) -> None:
        """SRModel's save (``net_g`` then the training state); after the final one (``current_iter`` -1)
        SIGTERM/SIGINT get their usual meaning back, as there is nothing left to save."""
        if current_iter != -1:
            self._epoch = epoch
        super().save(epoch, current_iter)
        if current_iter == -1:
            uninstall_signal_handlers()
        else:
            self._last_checkpoint = current_iter

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR's format (``{param_key: state_dict}``, tensors on the CPU), written atomically; raises
        ``NonFiniteLossError`` rather than save non-finite weights, ``CheckpointSaveError`` if it cannot write."""
        label = 'latest' if current_iter == -1 else current_iter
        save_path = Path(self.opt['path']['models']) / f'{net_label}_{label}.pth'
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        assert len(nets) == len(keys), 'The lengths of net and param_key should be the same.'
        save_dict = {}
        for net_, key in zip(nets, keys):
            state_dict = OrderedDict()
            for name, param in self.get_bare_model(net_).state_dict().items():
                state_dict[name[len('module.'):] if name.startswith('module.') else name] = param.cpu().contiguous()
            save_dict[key] = state_dict
        bad = [f'{key}.{name}' for key, params in save_dict.items() for name, value in params.items()
               if value.is_floating_point() and not bool(torch.isfinite(value).all())]
        if bad:
            raise NonFiniteLossError(f'refusing to save {save_path}: non-finite values in {", ".join(bad[:5])}; '
                                     f'the checkpoints already saved are intact.')
        atomic_save(save_dict, save_path, 'network weights', warn=get_root_logger().warning)

    @master_only
    def save_training_state(self, epoch, current_iter):
        """BasicSR's state (``epoch``, ``iter``, ``optimizers``, ``schedulers``), plus the fp16 loss scaler's
        (``grad_scaler``) on that path, written atomically."""
        if current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [], 'schedulers': []}
        for optimizer in self.optimizers:
            state['optimizers'].append(optimizer.state_dict())
        for scheduler in self.schedulers:
            state['schedulers'].append(scheduler.state_dict())
        if self._grad_scaler is not None:
            state['grad_scaler'] = self._grad_scaler.state_dict()
        save_path = Path(self.opt['path']['training_states']) / f'{current_iter}.state'
        atomic_save(state, save_path, 'training state', warn=get_root_logger().warning)
