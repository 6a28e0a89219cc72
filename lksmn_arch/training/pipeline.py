"""BasicSR glue: run BasicSR's own train and test pipelines with LKSMN registered.

``run_training`` / ``run_testing`` check the option file first (so that a wrong path or key is a
clear message, not a traceback from a DataLoader worker), install the plugin's resume logic, and
call ``basicsr.train.train_pipeline`` / ``basicsr.test.test_pipeline`` unchanged. Outputs
(``experiments/``, ``tb_logger/``, ``results/``) go under ``root_path``, the working directory by default.

The fault guarantees (atomic saves, a save on SIGTERM/SIGINT, non-finite step skipping, weights-only loading)
live in ``LKSMNModel``. Option files written for plain BasicSR (``model_type: SRModel``, same option keys) run
as ``LKSMNModel`` (one ``--force_yml model_type=LKSMNModel`` more for BasicSR, and one log line saying so);
any other model type runs as written, with a warning naming the guarantees it lacks.
"""
import argparse
import logging
import os
import re
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import lksmn_arch

lksmn_arch.load()  # compat fixes, LKSMN and LKSMNModel registered, before anything below imports basicsr

from lksmn_arch.training import resume
from lksmn_arch.training.options import (OptionsError, apply_force_yml, check_option_keys, check_option_values,
                                         check_scale_values, read_option_file)
from lksmn_arch.utils.checkpoint import CheckpointError
from lksmn_arch.utils.atomic import check_writable
from lksmn_arch.models.lksmn_model import (TrainingInterrupted, end_failed_run, exit_after_stop,
                                           shield_dataloader_workers)
from lksmn_arch.data.dataset_checks import DatasetError, check_dataset_options, name_files_in_sample_errors


PLAIN_NAME = re.compile(r'^[A-Za-z0-9_.+-]{1,128}$')  # an experiment name: a folder name, nothing more
SHIPPED_PREFIX = 'shipped:'  # path.pretrain_network_g: shipped:x4 = the model shipped in the package
# OptionsError lives in training/options.py (the option-file checks) and is imported from here by the callers.


def build_parser(prog: str, is_train: bool) -> argparse.ArgumentParser:
    """The arguments BasicSR's ``parse_options`` reads, with help."""
    what = 'Train' if is_train else 'Test'
    out = 'experiments/<name>/ and tb_logger/<name>/' if is_train else 'results/<name>/'
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f'{what} LKSMN with BasicSR\'s own {"training" if is_train else "test"} pipeline, '
        f'driven by a BasicSR option file. Writes {out} under the current directory.')
    parser.add_argument('-opt', required=True, metavar='OPT.yml',
                        help='BasicSR option file (YAML); a bare name not found here is looked up among the '
                        'templates shipped with the package (e.g. test_LKSMN_x4_openphotos.yml)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='distributed launcher: none (one process), pytorch (under torchrun) or slurm')
    parser.add_argument('--auto_resume', action='store_true',
                        help='continue from the newest valid training state of this experiment, if any')
    parser.add_argument('--debug', action='store_true', help="BasicSR's debug mode (name prefixed with debug_)")
    parser.add_argument('--local_rank', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY:PATH=VALUE',
                        help='override option values, e.g. train:total_iter=1000')
    if not is_train:
        parser.add_argument('--random-weights', action='store_true',
                            help='test a network without path.pretrain_network_g (random weights: its scores mean '
                            'nothing); refused otherwise')
    return parser


def option_templates_dir() -> Path:
    """The option files shipped with the package (``lksmn_arch/options/`` when installed, else the source tree's
    ``options/``)."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / 'options'
    return packaged if packaged.is_dir() else package.parent / 'options'


def find_option_file(opt_path: str) -> str:
    """``opt_path`` if it exists; else a shipped template of that name (``train_LKSMN_x4.yml``); OptionsError."""
    if Path(opt_path).is_file():
        return opt_path
    if Path(opt_path).is_dir():
        raise OptionsError(f'option file {opt_path} is a folder, not a YAML file')
    if os.sep not in opt_path and '/' not in opt_path:
        shipped = sorted(p for p in option_templates_dir().rglob('*.yml') if p.name == opt_path)
        if shipped:
            print(f'option file: {opt_path} is not in the current folder; using the template shipped with '
                  f'lksmn_arch: {shipped[0]}', flush=True)
            return str(shipped[0])
    raise OptionsError(f'option file {opt_path} does not exist (shipped templates: {option_templates_dir()})')


def load_options(opt_path: str, force_yml: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Read an option file as BasicSR will (including ``--force_yml`` overrides), before BasicSR does: a binary
    file, a YAML alias bomb, a repeated key or a ``--force_yml`` entry that does not parse is an ``OptionsError``
    (``lksmn_arch.training.options``), so that BasicSR's own reading never sees them."""
    opt = read_option_file(opt_path)
    if not isinstance(opt, dict):
        raise OptionsError(f'option file {opt_path} does not hold a mapping of options')
    apply_force_yml(opt, force_yml or [], opt_path)
    return opt


def _require(opt: Dict[str, Any], keys: str, opt_path: str) -> Any:
    node: Any = opt
    for key in keys.split('.'):
        if not isinstance(node, dict) or key not in node:
            raise OptionsError(f'{opt_path}: missing key {keys}')
        node = node[key]
    return node


def check_options(opt: Dict[str, Any], opt_path: str, is_train: bool) -> None:
    """Raise ``OptionsError`` for what would otherwise fail later with an obscure message (or run wrongly):
    near-miss keys, missing keys, values of the wrong type or range, paths and datasets that cannot be read."""
    check_option_keys(opt, opt_path)
    for key in ('name', 'model_type', 'num_gpu', 'network_g', 'datasets', 'path'):
        _require(opt, key, opt_path)
    if not isinstance(opt['path'], dict):
        raise OptionsError(f'{opt_path}: path must be a mapping (pretrain_network_g, resume_state, ...), got '
                           f'{opt["path"]!r}')
    if not isinstance(opt['datasets'], dict):
        raise OptionsError(f'{opt_path}: datasets must be a mapping of phases (train, val...), got '
                           f'{opt["datasets"]!r}')
    num_gpu = opt['num_gpu']
    if num_gpu != 'auto' and (type(num_gpu) is not int or num_gpu < 0):
        raise OptionsError(f"{opt_path}: num_gpu must be 'auto' or a number >= 0, got {num_gpu!r}")
    if num_gpu not in ('auto', 0):
        import torch
        if not torch.cuda.is_available():
            raise OptionsError(f"{opt_path}: num_gpu is {num_gpu} but torch sees no CUDA GPU (use num_gpu: auto)")
    name = opt['name']
    if not isinstance(name, str) or not PLAIN_NAME.match(name) or name.startswith('.'):
        raise OptionsError(f'{opt_path}: name {name!r} must be a plain name (letters, digits, _ . + -; no path '
                           'separators, not empty, not hidden): it names the folder under experiments/ or results/')
    network = opt['network_g']
    scale = opt.get('scale')
    if not isinstance(network, dict):
        raise OptionsError(f'{opt_path}: network_g must be a mapping of the network\'s type and arguments')
    check_scale_values(opt, opt_path)
    if network.get('type') == 'LKSMN':
        upscale = network.get('upscale', 4)
        if scale is None:
            raise OptionsError(f'{opt_path}: missing key scale (network_g.upscale is {upscale})')
        if scale != upscale:
            raise OptionsError(f'{opt_path}: scale ({scale}) differs from network_g.upscale ({upscale}); '
                               f'they must be equal')
        from lksmn_arch.archs.lksmn_arch import LKSMN, SUPPORTED_SCALES
        if upscale not in SUPPORTED_SCALES:
            raise OptionsError(f'{opt_path}: scale {upscale}: LKSMN supports {", ".join(map(str, SUPPORTED_SCALES))}')
        try:
            LKSMN(**{k: v for k, v in network.items() if k != 'type'})
        except (TypeError, ValueError) as error:
            raise OptionsError(f'{opt_path}: network_g: {error}') from None
    if is_train:
        _require(opt, 'logger.use_tb_logger', opt_path)
        if 'train' not in opt['datasets']:
            raise OptionsError(f'{opt_path}: missing key datasets.train')
    check_option_values(opt, opt_path, is_train)
    for key, value in opt['path'].items():
        if not str(key).startswith('pretrain_network') or not value:
            continue  # path.resume_state: checked by resume.load_resume_state (ignored with --auto_resume)
        if not isinstance(value, str):
            raise OptionsError(f'{opt_path}: path.{key} must be a file path, got {value!r}')
        path = Path(os.path.expanduser(value))
        if path.is_dir():
            raise OptionsError(f'{opt_path}: path.{key} {value} is a folder, not a checkpoint file; name the .pth '
                               f'file in it (e.g. {Path(value) / "net_g_latest.pth"})')
        if not path.is_file():
            raise OptionsError(f'{opt_path}: path.{key} {value} does not exist')
    if not opt['datasets']:
        raise OptionsError(f'{opt_path}: datasets is empty')
    for phase, dataset_opt in opt['datasets'].items():
        training_patches = is_train and str(phase).split('_')[0] == 'train'
        patch = dataset_opt.get('gt_size') if training_patches and isinstance(dataset_opt, dict) else None
        try:
            check_dataset_options(dataset_opt, scale, f'datasets.{phase}', patch_size=patch)
        except DatasetError as error:
            raise OptionsError(f'{opt_path}: {error}') from error


@contextmanager
def _basicsr_argv(prog: str, argv: List[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        yield
    finally:
        sys.argv = saved


def _pass_dist_params_to_torchrun(opt: Dict[str, Any]) -> None:
    """BasicSR passes ``dist_params`` to the slurm launcher only; give them to ``--launcher pytorch`` too."""
    from basicsr.utils import options
    params = dict(opt.get('dist_params') or {})
    original = getattr(options.init_dist, '_lksmn_original', options.init_dist)
    if not params:
        options.init_dist = original
        return

    def init_dist(launcher: str, backend: str = 'nccl', **kwargs: Any) -> None:
        if launcher == 'pytorch':
            kwargs = {**{k: v for k, v in params.items() if k != 'backend'}, **kwargs}
            backend = params.get('backend', backend)
            kwargs.pop('port', None)  # a slurm-only setting
        original(launcher, backend=backend, **kwargs)

    init_dist._lksmn_original = original
    options.init_dist = init_dist


GUARDED_MODEL_TYPE = 'LKSMNModel'
RUN_AS_GUARDED = ('SRModel',)  # model types whose option files run unchanged as LKSMNModel (same option keys)
TRAIN_GUARANTEES = ('atomic checkpoint saves', 'a checkpoint saved on SIGTERM/SIGINT before stopping',
                    'skipping of non-finite steps', 'weights-only loading with a one-line refusal of pickled code')
TEST_GUARANTEES = ('weights-only loading with a one-line refusal of pickled code',)

Note = Tuple[int, str]  # (logging level, message)
_model_note: Optional[Note] = None  # logged when BasicSR builds the model


def model_type_plan(opt: Dict[str, Any], opt_path: str, is_train: bool) -> Tuple[Optional[str], Optional[Note]]:
    """How the option file's ``model_type`` will run: the ``--force_yml`` entry that runs it as ``LKSMNModel``
    (None: it runs as written), and the line to log about it, as (logging level, message), if any."""
    model_type = opt['model_type']
    if model_type == GUARDED_MODEL_TYPE:
        return None, None
    if model_type in RUN_AS_GUARDED:
        added = ('atomic checkpoint saves, a checkpoint on SIGTERM/SIGINT, verified resume, non-finite step '
                 'skipping and weights-only loading' if is_train else 'weights-only loading')
        return f'model_type={GUARDED_MODEL_TYPE}', (
            logging.INFO, f'{opt_path}: model_type {model_type} runs as {GUARDED_MODEL_TYPE} ({model_type} with the '
                          f'same option keys, plus {added}).')
    guarantees = TRAIN_GUARANTEES if is_train else TEST_GUARANTEES
    still = 'option checks and verified --auto_resume still apply' if is_train else 'option checks still apply'
    return None, (logging.WARNING,
                  f'{opt_path}: model_type {model_type} runs as written, without these guarantees (they hold for '
                  f'{GUARDED_MODEL_TYPE} and {", ".join(RUN_AS_GUARDED)} only): {"; ".join(guarantees)}. The '
                  f'{still}.')


def _announce_model_type(module: Any, note: Optional[Note]) -> None:
    """Have ``module.build_model`` (``basicsr.train`` / ``basicsr.test``) log ``note`` first: by then BasicSR's
    logger writes to the run's log file as well as the console (rank 0 only)."""
    global _model_note
    _model_note = note
    original = getattr(module.build_model, '_lksmn_original', module.build_model)

    def build_model(opt: Dict[str, Any]) -> Any:
        if _model_note is not None:
            from basicsr.utils import get_root_logger
            get_root_logger().log(*_model_note)
        return original(opt)

    build_model._lksmn_original = original
    module.build_model = build_model


def _basicsr_arguments(args: argparse.Namespace, force_yml: List[str]) -> List[str]:
    """The command line for BasicSR's ``parse_options``: ``args`` with ``force_yml`` as the overrides."""
    argv = ['-opt', args.opt, '--launcher', args.launcher]
    argv += ['--auto_resume'] * args.auto_resume + ['--debug'] * args.debug
    if args.local_rank:
        argv += ['--local_rank', str(args.local_rank)]
    return argv + (['--force_yml', *force_yml] if force_yml else [])


def resolve_shipped_paths(opt: Dict[str, Any], opt_path: str) -> List[str]:
    """Turn ``path.pretrain_network_*: shipped:x<s>`` into the shipped model's file (checked), in ``opt``; returns
    the ``--force_yml`` overrides that tell BasicSR the same."""
    from lksmn_arch.weights.shipped import ShippedModelError, default_model
    overrides = []
    for key, value in list((opt.get('path') or {}).items()):
        if key.startswith('pretrain_network') and isinstance(value, str) and value.startswith(SHIPPED_PREFIX):
            scale = value[len(SHIPPED_PREFIX):].lstrip('x')
            if not scale.isdigit():
                raise OptionsError(f'{opt_path}: path.{key} {value!r}: write shipped:x2, shipped:x3 or shipped:x4')
            try:
                resolved = str(default_model(int(scale)).path)
            except ShippedModelError as error:
                raise OptionsError(f'{opt_path}: path.{key} {value}: {error}') from None
            opt['path'][key] = resolved
            overrides.append(f'path:{key}={resolved}')
    return overrides


def _prepare(prog: str, argv: Optional[Sequence[str]], is_train: bool) -> Tuple[List[str], Optional[Note]]:
    """Check the option file; the command line for BasicSR and the model-type line to log."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog, is_train).parse_args(argv)
    args.opt = find_option_file(args.opt)
    opt = load_options(args.opt, args.force_yml)
    overrides = resolve_shipped_paths(opt, args.opt)
    check_options(opt, args.opt, is_train)
    if not is_train and not (opt.get('path') or {}).get('pretrain_network_g') and not args.random_weights:
        raise OptionsError(f'{args.opt}: path.pretrain_network_g is not set, so the test would score random weights; '
                           'set it to a checkpoint (or shipped:x4), or pass --random-weights if that is what you want')
    run_as, note = model_type_plan(opt, args.opt, is_train)
    if run_as:
        overrides.append(run_as)
    # BasicSR's own parser gets only its arguments; argparse keeps only the last --force_yml, so all overrides
    # go into one
    argv = _basicsr_arguments(args, [*(args.force_yml or []), *overrides])
    _pass_dist_params_to_torchrun(opt)
    name_files_in_sample_errors()
    return argv, note


def run_training(argv: Optional[Sequence[str]] = None, root_path: Optional[str] = None,
                 prog: str = 'lksmn-train') -> None:
    """``basicsr.train.train_pipeline`` with checked options and the plugin's resume logic; ``model_type:
    SRModel`` runs as ``LKSMNModel``, other types than these two with a warning naming what is not covered."""
    import basicsr.train
    argv, note = _prepare(prog, argv, is_train=True)
    root = os.path.abspath(root_path or os.getcwd())
    check_writable(Path(root) / 'experiments', 'experiments folder')
    shield_dataloader_workers()  # a SIGTERM to the process group must reach the trainer, not kill its workers
    basicsr.train.load_resume_state = resume.load_resume_state
    _announce_model_type(basicsr.train, note)
    with _basicsr_argv(prog, argv):
        basicsr.train.train_pipeline(root)


def run_testing(argv: Optional[Sequence[str]] = None, root_path: Optional[str] = None,
                prog: str = 'lksmn-test') -> None:
    """``basicsr.test.test_pipeline`` with checked options; model types as in ``run_training``."""
    import basicsr.test
    argv, note = _prepare(prog, argv, is_train=False)
    _announce_model_type(basicsr.test, note)
    with _basicsr_argv(prog, argv):
        basicsr.test.test_pipeline(os.path.abspath(root_path or os.getcwd()))


def _one_line(error: BaseException) -> str:
    """``Type: message`` on one line; for an error re-raised from a DataLoader worker (whose message holds the
    worker's traceback), the worker's original error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any(line.startswith('Original Traceback') for line in lines):
        return re.sub(r'^[\w.]+\.(\w+): ', r'\1: ', lines[-1])
    return f'{type(error).__name__}: {lines[0]}' if lines else type(error).__name__


def _log_files() -> List[str]:
    """The files BasicSR's logger writes this run's log to (none before it is set up)."""
    return [handler.baseFilename for handler in logging.getLogger('basicsr').handlers
            if isinstance(handler, logging.FileHandler)]


def _record_traceback(error: BaseException) -> None:
    """Write ``error``'s traceback to the run's log files only (the console gets one line)."""
    logger = logging.getLogger('basicsr')
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, 'The run failed:', None,
                               (type(error), error, error.__traceback__))
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
            handler.flush()


def cli(runner, prog: str, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``runner`` and return the exit status, printing one line on stderr for any failure: an
    ``OptionsError`` (the user's option file or command line) is status 2; a training fault (an unsafe or corrupt
    checkpoint, a failed save, NaNs) or any other exception is status 1 (its traceback goes to the run's log file,
    and to stderr as well with ``--debug``); Ctrl-C before the training loop's handler takes over is 130. A failed
    run's DataLoader workers are stopped and SIGTERM/SIGINT get their usual meaning back; with ``argv`` None (the
    process's own command line) the process is also made to end even if the run left threads that would keep it
    alive (``end_failed_run``). A run stopped by SIGTERM/SIGINT after saving ends the process here with
    128 + signal (``exit_after_stop``), once the training loop has unwound."""
    stopped: Optional[int] = None
    status = 0
    debug = '--debug' in (sys.argv[1:] if argv is None else argv)
    try:
        runner(argv, prog=prog)
    except OptionsError as error:
        print(f'{prog}: error: {error}', file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        stopped = stop.code
    except KeyboardInterrupt:
        print(f'{prog}: interrupted (Ctrl-C); checkpoints saved before it are kept', file=sys.stderr)
        status = 130
    except Exception as error:  # noqa: BLE001  (any failure: one line, not a traceback)
        if debug:
            traceback.print_exception(type(error), error, error.__traceback__)
        _record_traceback(error)
        if isinstance(error, (resume.TrainingError, CheckpointError)):  # the message says it all
            message = ' '.join(str(error).split())
        else:
            logs = _log_files()
            where = f'; the traceback is in {logs[0]}' if logs else '' if debug else '; --debug shows the traceback'
            message = f'the run failed: {_one_line(error)}{where}'
        print(f'{prog}: error: {message}', file=sys.stderr, flush=True)
        status = 1
    if stopped is not None:  # outside the except clause: the loop's frames (and DataLoader iterators) are freed
        exit_after_stop(stopped)
    if status:
        end_failed_run(status, own_process=argv is None)
    return status
