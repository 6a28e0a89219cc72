"""Option files as ``lksmn-train`` / ``lksmn-test`` read them before BasicSR does: bounded YAML reading,
``--force_yml`` overrides parsed without ``eval``, and checks of keys and values that BasicSR would otherwise
report late (a ``KeyError`` after the start-up log, a ``ZeroDivisionError`` inside the training loop) or not at
all (``total_iter: -5`` trains nothing and saves the untrained network).

Every refusal is an ``OptionsError`` whose message names the file, the key and the value.
"""
import ast
import difflib
import inspect
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml

MAX_OPTION_FILE_BYTES = 1 << 20  # option files are a few kB
MAX_OPTION_NODES = 100_000  # values after YAML aliases are expanded; option files hold a few hundred
MAX_OPTION_DEPTH = 64  # nesting levels; option files nest five or six
MAX_SEED = 2 ** 32 - 1 - 1024  # numpy's seed range, less room for BasicSR's ``seed + rank``

GUARDED_MODEL_TYPES = ('LKSMNModel', 'SRModel')  # SRModel option files run as LKSMNModel (pipeline.py)
CHECKED_DATASET_TYPES = ('PairedImageDataset', 'SingleImageDataset')
SCHEDULER_TYPES = {'MultiStepLR': 'MultiStepRestartLR', 'MultiStepRestartLR': 'MultiStepRestartLR',
                   'CosineAnnealingRestartLR': 'CosineAnnealingRestartLR'}  # what BasicSR 1.4.2 builds

# The keys that BasicSR 1.4.2's train/test pipelines, SRModel/LKSMNModel and the image datasets read, per section:
# an unknown key close to one of these (``save_imgs``) when that one is absent is a typo that BasicSR would answer
# with a KeyError late in start-up, or silently with the default.
KNOWN_KEYS: Dict[str, Tuple[str, ...]] = {
    '': ('name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'network_g', 'network_d', 'path',
         'train', 'val', 'logger', 'dist_params', 'find_unused_parameters'),
    'val': ('val_freq', 'save_img', 'suffix', 'pbar', 'metrics', 'center_frame_only', 'flip_seq',
            'num_val_samples'),
    'logger': ('print_freq', 'save_checkpoint_freq', 'use_tb_logger', 'wandb'),
    'path': ('pretrain_network_g', 'strict_load_g', 'param_key_g', 'pretrain_network_d', 'strict_load_d',
             'param_key_d', 'resume_state', 'ignore_resume_networks', 'experiments_root', 'models',
             'training_states', 'log', 'visualization', 'results_root'),
    'train': ('ema_decay', 'optim_g', 'optim_d', 'scheduler', 'total_iter', 'warmup_iter', 'pixel_opt',
              'perceptual_opt', 'gan_opt', 'net_d_iters', 'net_d_init_iters', 'max_nonfinite_steps', 'precision',
              'channels_last', 'lkcd_depthwise_fp32', 'progressive_patches'),
    'dataset': ('name', 'type', 'dataroot_gt', 'dataroot_lq', 'meta_info_file', 'filename_tmpl', 'io_backend',
                'gt_size', 'use_hflip', 'use_rot', 'num_worker_per_gpu', 'batch_size_per_gpu',
                'dataset_enlarge_ratio', 'prefetch_mode', 'pin_memory', 'persistent_workers', 'num_prefetch_queue',
                'color', 'mean', 'std', 'phase', 'scale'),
    'io_backend': ('type', 'db_paths', 'client_keys'),
}
NEAR_MISS_CUTOFF = 0.8

# Keys whose values are text (names, paths): never read as numbers written the YAML 1.1 way.
TEXT_KEYS = ('name', 'type', 'suffix', 'filename_tmpl', 'meta_info_file', 'backend', 'project', 'resume_id',
             'entity', 'model_type')
EXPONENT_NUMBER = re.compile(r'^[-+]?(\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$')


class OptionsError(ValueError):
    """The option file cannot run: names the file, the key or the path at fault."""


# --- reading ------------------------------------------------------------------------------------------------

def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: where and what."""
    mark = getattr(error, 'problem_mark', None) or getattr(error, 'context_mark', None)
    problem = getattr(error, 'problem', None) or str(error).splitlines()[0]
    context = getattr(error, 'context', None)
    where = f'line {mark.line + 1}, column {mark.column + 1}: ' if mark is not None else ''
    text = f'{where}{problem}' + (f' ({context})' if context else '')
    return ' '.join(text.split())


def _scalar_key(node: yaml.Node) -> Optional[str]:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _check_node_graph(root: yaml.Node, opt_path: str) -> None:
    """Refuse a YAML document whose aliases expand to more than ``MAX_OPTION_NODES`` values (an alias bomb: a
    1 kB file can stand for billions; BasicSR's log of the options would print them all), refers to itself, nests
    deeper than ``MAX_OPTION_DEPTH`` or repeats a key in a mapping (BasicSR would keep the last silently).
    Linear in the file: each node's expanded size is computed once."""
    sizes: Dict[int, int] = {}
    active: set = set()

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        line = node.start_mark.line + 1
        if id(node) in active:
            raise OptionsError(f'{opt_path}: line {line}: a YAML alias refers to the value that holds it '
                               f'(a structure without end)')
        if depth > MAX_OPTION_DEPTH:
            raise OptionsError(f'{opt_path}: line {line}: values nested more than {MAX_OPTION_DEPTH} levels deep')
        active.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            seen: Dict[str, int] = {}
            for key, value in node.value:
                name = _scalar_key(key)
                if name is not None and key.tag != 'tag:yaml.org,2002:merge':
                    if name in seen:
                        raise OptionsError(f'{opt_path}: key {name} appears twice in one mapping (lines {seen[name]} '
                                           f'and {key.start_mark.line + 1}); BasicSR would use the last silently')
                    seen[name] = key.start_mark.line + 1
                total += size(key, depth + 1) + size(value, depth + 1)
        active.discard(id(node))
        sizes[id(node)] = total
        return total

    if size(root, 0) <= MAX_OPTION_NODES:
        return
    culprit = ''
    if isinstance(root, yaml.MappingNode) and root.value:
        key, _ = max(root.value, key=lambda pair: sizes.get(id(pair[1]), 0))
        culprit = f' (under key {_scalar_key(key) or "?"}, line {key.start_mark.line + 1})'
    raise OptionsError(f'{opt_path}: its YAML aliases expand to {sizes[id(root)]:.3g} values{culprit}, more than the '
                       f'{MAX_OPTION_NODES} an option file may hold (an alias bomb?); refusing to read it')


def read_option_file(opt_path: str) -> Any:
    """The YAML document of ``opt_path``, read with a safe loader after these checks: a file (not a folder) of
    at most ``MAX_OPTION_FILE_BYTES``, UTF-8 text, valid YAML, and a bounded node graph (``_check_node_graph``).
    Any failure is an ``OptionsError`` of one line."""
    path = Path(opt_path)
    if path.is_dir():
        raise OptionsError(f'option file {opt_path} is a folder, not a YAML file')
    if not path.is_file():
        raise OptionsError(f'option file {opt_path} does not exist')
    try:
        size = path.stat().st_size
        if size > MAX_OPTION_FILE_BYTES:
            raise OptionsError(f'option file {opt_path} is {size / 2 ** 20:.1f} MiB; an option file is a few kB '
                               f'of YAML (limit {MAX_OPTION_FILE_BYTES // 2 ** 10} kB): is it the right file?')
        data = path.read_bytes()[:MAX_OPTION_FILE_BYTES + 1]
    except OSError as error:
        raise OptionsError(f'option file {opt_path} cannot be read: {error.strerror or error}') from None
    if b'\0' in data:
        raise OptionsError(f'option file {opt_path} is a binary file (a NUL byte at offset {data.index(0)}), not '
                           'YAML text')
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as error:
        raise OptionsError(f'option file {opt_path} is not UTF-8 text (byte {error.start}); is it a binary '
                           'file?') from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node_graph(node, opt_path)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise OptionsError(f'option file {opt_path} is not valid YAML: {_yaml_problem(error)}') from None
    except RecursionError:
        raise OptionsError(f'option file {opt_path}: values nested too deeply') from None
    finally:
        loader.dispose()


def parse_force_yml_value(value: str, entry: str) -> Any:
    """A ``--force_yml`` value as BasicSR's ``_postprocess_yml_value`` reads it (None, booleans, ``!!float x``,
    digits, ``[lists]``, else a string), except that a list is read as a Python literal, never evaluated:
    an expression or a list that does not parse is an ``OptionsError``."""
    if value == '~' or value.lower() == 'none':
        return None
    if value.lower() in ('true', 'false'):
        return value.lower() == 'true'
    if value.startswith('!!float'):
        try:
            return float(value[len('!!float'):])
        except ValueError:
            raise OptionsError(f'--force_yml {entry}: {value!r} is not a number after !!float') from None
    if value.isdigit():
        return int(value)
    if value.replace('.', '', 1).isdigit() and value.count('.') < 2:
        return float(value)
    if value.startswith('['):
        try:
            return ast.literal_eval(value)
        except SyntaxError as error:
            problem = error.msg
        except (ValueError, TypeError, MemoryError, RecursionError):
            problem = 'only numbers, strings, booleans and lists of them are allowed'
        raise OptionsError(f'--force_yml {entry}: the value {value} does not parse as a list of literals '
                           f'({problem}); BasicSR reads a value that starts with "[" as a Python list')
    try:
        float(value)
    except ValueError:
        return value
    if value.lower().lstrip('+-') in ('inf', 'infinity', 'nan'):
        return value
    raise OptionsError(f'--force_yml {entry}: BasicSR would read {value} as the string {value!r} (it reads only '
                       f'digits, digits with one dot and !!float <number> as numbers); write !!float {value}')


def apply_force_yml(opt: Dict[str, Any], entries: Sequence[str], opt_path: str) -> None:
    """Apply ``--force_yml KEY:SUBKEY=VALUE`` entries to ``opt`` as BasicSR will, refusing in one line an entry
    BasicSR would fail on: no ``=`` or more than one, a key that is not in the file, a value that does not parse."""
    for entry in entries:
        if entry.count('=') != 1:
            raise OptionsError(f'--force_yml {entry}: write KEY:SUBKEY=VALUE with exactly one "=" (BasicSR splits '
                               f'the entry at "=")')
        keys, _, value = entry.partition('=')
        path = [key.strip() for key in keys.strip().split(':')]
        if any(not key or re.search(r'["\'\\\[\]]', key) for key in path):
            raise OptionsError(f'--force_yml {entry}: {keys.strip()!r} is not a KEY:SUBKEY path of plain keys')
        *parents, last = path
        node: Any = opt
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise OptionsError(f'--force_yml {entry}: {keys.strip()} is not a key of {opt_path}')
        node[last] = parse_force_yml_value(value.strip(), entry)


# --- keys -----------------------------------------------------------------------------------------------------

def _near_misses(section: Dict[str, Any], known: Sequence[str], where: str, opt_path: str) -> None:
    """Refuse an unknown key of ``section`` that is close to a known key that ``section`` lacks."""
    absent = [key for key in known if key not in section]
    for key in section:
        if not isinstance(key, str) or key in known:
            continue
        match = difflib.get_close_matches(key, absent, n=1, cutoff=NEAR_MISS_CUTOFF)
        if match:
            prefix = f'{where}.' if where else ''
            raise OptionsError(f'{opt_path}: {prefix}{key} is not a key BasicSR reads; did you mean {prefix}{match[0]}? '
                               f'({match[0]} is not set)')


def check_option_keys(opt: Dict[str, Any], opt_path: str) -> None:
    """Refuse near-miss keys (``val.save_imgs`` for ``val.save_img``) in the sections BasicSR reads: the top level,
    ``val``, ``logger``, ``path``, ``train`` (for LKSMNModel/SRModel) and the image datasets."""
    _near_misses(opt, KNOWN_KEYS[''], '', opt_path)
    for section in ('val', 'logger', 'path', 'train'):
        if section == 'train' and opt.get('model_type') not in GUARDED_MODEL_TYPES:
            continue
        if isinstance(opt.get(section), dict):
            _near_misses(opt[section], KNOWN_KEYS[section], section, opt_path)
    datasets = opt.get('datasets')
    for phase, dataset_opt in (datasets.items() if isinstance(datasets, dict) else ()):
        if isinstance(dataset_opt, dict) and dataset_opt.get('type') in CHECKED_DATASET_TYPES:
            _near_misses(dataset_opt, KNOWN_KEYS['dataset'], f'datasets.{phase}', opt_path)
            if isinstance(dataset_opt.get('io_backend'), dict):
                _near_misses(dataset_opt['io_backend'], KNOWN_KEYS['io_backend'], f'datasets.{phase}.io_backend',
                             opt_path)


# --- values ---------------------------------------------------------------------------------------------------

def yaml11_number(text: str) -> str:
    """``text`` (a number in exponent form that YAML 1.1 reads as a string: ``1e-3``) written so that it reads as
    a float: a dot in the mantissa and a signed exponent (``1.0e-3``)."""
    mantissa, exponent = re.split('[eE]', text, maxsplit=1)
    if '.' not in mantissa:
        mantissa += '.0'
    if mantissa.endswith('.'):
        mantissa += '0'
    if exponent[0] not in '+-':
        exponent = '+' + exponent
    return f'{mantissa}e{exponent}'


def _not_a_number(opt_path: str, key: str, value: str, wanted: str) -> OptionsError:
    if EXPONENT_NUMBER.match(value.strip()):
        return OptionsError(f'{opt_path}: {key} is the string {value!r}, not a number: YAML 1.1 (PyYAML, which BasicSR '
                            f'uses) reads a number in exponent form as a string unless it has a dot and a signed '
                            f'exponent; write {yaml11_number(value.strip())} (or !!float {value.strip()})')
    try:
        float(value)
    except ValueError:
        return OptionsError(f'{opt_path}: {key} must be {wanted}, got the string {value!r}')
    return OptionsError(f'{opt_path}: {key} is the string {value!r}, not a number: it must be {wanted}; write '
                        f'it without quotes ({key.rsplit(".", 1)[-1]}: {value.strip()})')


def _whole(opt_path: str, key: str, value: Any, minimum: Optional[int] = None, integral_float: bool = True,
           what: str = '') -> None:
    """``value`` is a whole number (an int; a float of integral value where ``integral_float``) >= ``minimum``."""
    wanted = 'an integer' + (f' >= {minimum}' if minimum is not None else '') + (f' ({what})' if what else '')
    if isinstance(value, str):
        raise _not_a_number(opt_path, key, value, wanted)
    ok = (isinstance(value, int) and not isinstance(value, bool)) or (
        integral_float and isinstance(value, float) and math.isfinite(value) and value == int(value))
    if not ok or (minimum is not None and value < minimum):
        raise OptionsError(f'{opt_path}: {key} must be {wanted}, got {value!r}')


def _number(opt_path: str, key: str, value: Any, minimum: float = -math.inf, maximum: float = math.inf,
            above: bool = False, below: bool = False) -> None:
    """``value`` is a finite number within [minimum, maximum] (exclusive ends where ``above`` / ``below``)."""
    low = f'> {minimum}' if above else f'>= {minimum}'
    high = f'< {maximum}' if below else f'<= {maximum}'
    bounds = ' and '.join(b for b, real in ((low, minimum > -math.inf), (high, maximum < math.inf)) if real)
    wanted = 'a number' + (f' {bounds}' if bounds else '')
    if isinstance(value, str):
        raise _not_a_number(opt_path, key, value, wanted)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > minimum if above else value >= minimum) and (value < maximum if below else value <= maximum)
    if not ok:
        raise OptionsError(f'{opt_path}: {key} must be {wanted}, got {value!r}')


def _flag(opt_path: str, key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise OptionsError(f'{opt_path}: {key} must be true or false, got {value!r}')


def _walk(node: Any, where: str) -> Iterator[Tuple[str, str, Any]]:
    """(dotted key, last key, value) of every value under ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        dotted = f'{where}.{key}' if where else str(key)
        yield dotted, str(key), value
        if isinstance(value, (dict, list)) and key != 'path':
            yield from _walk(value, dotted)


def _check_exponent_strings(opt: Dict[str, Any], opt_path: str) -> None:
    """Refuse ``1e-3`` anywhere but in text keys: YAML 1.1 makes it a string that BasicSR passes on as one."""
    for dotted, key, value in _walk(opt, ''):
        if dotted.startswith('path.') or key in TEXT_KEYS or key.startswith('dataroot') or key == 'db_paths':
            continue
        if isinstance(value, str) and EXPONENT_NUMBER.match(value.strip()):
            raise _not_a_number(opt_path, dotted, value, 'a number')


def _check_train_section(opt: Dict[str, Any], opt_path: str) -> None:
    train = opt.get('train')
    if not isinstance(train, dict):
        raise OptionsError(f'{opt_path}: train must be a mapping of training options, got {train!r}')
    if 'total_iter' not in train:
        raise OptionsError(f'{opt_path}: missing key train.total_iter')
    _whole(opt_path, 'train.total_iter', train['total_iter'], 1, what='the number of iterations to train')
    if train.get('warmup_iter') is not None:
        _whole(opt_path, 'train.warmup_iter', train['warmup_iter'], -1)
    if train.get('ema_decay') is not None:
        _number(opt_path, 'train.ema_decay', train['ema_decay'], 0, 1, below=True)
    for name, optim in train.items():
        if not (isinstance(name, str) and name.startswith('optim_')):
            continue
        if not isinstance(optim, dict):
            raise OptionsError(f'{opt_path}: train.{name} must be a mapping (type, lr, ...), got {optim!r}')
        if 'lr' not in optim:
            raise OptionsError(f'{opt_path}: missing key train.{name}.lr')
        _number(opt_path, f'train.{name}.lr', optim['lr'], 0, above=True)
        for key in ('weight_decay', 'eps'):
            if optim.get(key) is not None:
                _number(opt_path, f'train.{name}.{key}', optim[key], 0, above=key == 'eps')
        betas = optim.get('betas')
        if betas is not None:
            if not isinstance(betas, list) or len(betas) != 2:
                raise OptionsError(f'{opt_path}: train.{name}.betas must be a list of two numbers, got {betas!r}')
            for index, beta in enumerate(betas):
                _number(opt_path, f'train.{name}.betas[{index}]', beta, 0, 1, below=True)
    if opt.get('model_type') in GUARDED_MODEL_TYPES:
        _check_guarded_train_section(train, opt_path)
        from lksmn_arch.models.patch_schedule import read_patch_schedule
        from lksmn_arch.errors import TrainingError
        try:
            read_patch_schedule(opt)
        except TrainingError as error:
            raise OptionsError(f'{opt_path}: {error}') from None


def _unexpected_arguments(function: Any, given: Sequence[str], skip: int) -> List[str]:
    """The names in ``given`` that ``function`` takes no keyword argument for (after its first ``skip``)."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    return [name for name in given if name not in {p.name for p in parameters}]


def _check_guarded_train_section(train: Dict[str, Any], opt_path: str) -> None:
    """What SRModel (and so LKSMNModel) builds from ``train``: an Adam optimizer, one of BasicSR's schedulers, a
    pixel or perceptual loss, and LKSMNModel's own keys."""
    import torch
    from basicsr.models import lr_scheduler
    from lksmn_arch.models.lksmn_model import check_nonfinite_limit, training_path
    from lksmn_arch.errors import TrainingError
    optim = train.get('optim_g')
    if not isinstance(optim, dict):
        raise OptionsError(f'{opt_path}: missing key train.optim_g (type: Adam, lr: ...)')
    if optim.get('type') != 'Adam':
        raise OptionsError(f'{opt_path}: train.optim_g.type {optim.get("type")!r}: BasicSR 1.4.2\'s SRModel builds '
                           f'only Adam')
    unknown = _unexpected_arguments(torch.optim.Adam, [k for k in optim if k not in ('type', 'lr')], 2)
    if unknown:
        raise OptionsError(f'{opt_path}: train.optim_g.{unknown[0]} is not an argument of torch.optim.Adam')
    scheduler = train.get('scheduler')
    if not isinstance(scheduler, dict):
        raise OptionsError(f'{opt_path}: missing key train.scheduler (type: MultiStepLR or CosineAnnealingRestartLR)')
    kind = SCHEDULER_TYPES.get(scheduler.get('type'))
    if kind is None:
        raise OptionsError(f'{opt_path}: train.scheduler.type {scheduler.get("type")!r}: BasicSR builds '
                           f'{", ".join(SCHEDULER_TYPES)}')
    unknown = _unexpected_arguments(getattr(lr_scheduler, kind), [k for k in scheduler if k != 'type'], 1)
    if unknown:
        raise OptionsError(f'{opt_path}: train.scheduler.{unknown[0]} is not an argument of BasicSR\'s {kind}')
    steps = 'milestones' if kind == 'MultiStepRestartLR' else 'periods'
    if not isinstance(scheduler.get(steps), list) or not scheduler[steps]:
        raise OptionsError(f'{opt_path}: train.scheduler.{steps} must be a list of iterations, got '
                           f'{scheduler.get(steps)!r}')
    for index, step in enumerate(scheduler[steps]):
        _whole(opt_path, f'train.scheduler.{steps}[{index}]', step, 1 if steps == 'periods' else 0)
    for key in ('gamma', 'eta_min'):
        if scheduler.get(key) is not None:
            _number(opt_path, f'train.scheduler.{key}', scheduler[key], 0, above=key == 'gamma')
    for key in ('restart_weights', 'restarts'):
        values = scheduler.get(key)
        if values is not None and not isinstance(values, list):
            raise OptionsError(f'{opt_path}: train.scheduler.{key} must be a list, got {values!r}')
        for index, value in enumerate(values or []):
            _number(opt_path, f'train.scheduler.{key}[{index}]', value, 0)
    if kind == 'CosineAnnealingRestartLR' and len(scheduler.get('restart_weights', [1])) != len(scheduler['periods']):
        raise OptionsError(f'{opt_path}: train.scheduler.periods and restart_weights must have the same length, got '
                           f'{scheduler["periods"]!r} and {scheduler.get("restart_weights", [1])!r}')
    if train.get('pixel_opt') is None and train.get('perceptual_opt') is None:
        raise OptionsError(f'{opt_path}: train has neither pixel_opt nor perceptual_opt: SRModel needs a loss')
    for key in ('pixel_opt', 'perceptual_opt'):
        loss = train.get(key)
        if loss is not None and not (isinstance(loss, dict) and loss.get('type')):
            raise OptionsError(f'{opt_path}: train.{key} must be a mapping with a type, got {loss!r}')
        if isinstance(loss, dict) and 'loss_weight' in loss:
            _number(opt_path, f'train.{key}.loss_weight', loss['loss_weight'], 0)
    try:
        check_nonfinite_limit(train)
        training_path(train, 'cpu')
    except TrainingError as error:
        raise OptionsError(f'{opt_path}: {error}') from None


def _check_dataset_values(phase: str, dataset_opt: Dict[str, Any], scale: Any, opt_path: str,
                          is_train: bool) -> None:
    where = f'datasets.{phase}'
    kind = phase.split('_')[0]
    if (is_train and phase != 'train' and kind != 'val') or (not is_train and kind not in ('val', 'test')):
        names = 'train, val or val_<name>' if is_train else 'test_<name> or val_<name>'
        raise OptionsError(f'{opt_path}: {where}: BasicSR\'s {"training" if is_train else "test"} pipeline reads '
                           f'datasets named {names}, not {phase!r}')
    if kind != 'train':
        return
    for key, minimum in (('batch_size_per_gpu', 1), ('num_worker_per_gpu', 0)):
        if key not in dataset_opt:
            raise OptionsError(f'{opt_path}: missing key {where}.{key}')
        _whole(opt_path, f'{where}.{key}', dataset_opt[key], minimum, integral_float=False)
    if dataset_opt.get('dataset_enlarge_ratio') is not None:
        _whole(opt_path, f'{where}.dataset_enlarge_ratio', dataset_opt['dataset_enlarge_ratio'], 1)
    prefetch = dataset_opt.get('prefetch_mode')
    if prefetch not in (None, 'cpu', 'cuda'):
        raise OptionsError(f'{opt_path}: {where}.prefetch_mode must be ~, cpu or cuda, got {prefetch!r}')
    if prefetch == 'cuda' and dataset_opt.get('pin_memory') is not True:
        raise OptionsError(f'{opt_path}: {where}.prefetch_mode cuda needs {where}.pin_memory: true')
    if prefetch == 'cpu' and dataset_opt.get('num_prefetch_queue') is not None:
        _whole(opt_path, f'{where}.num_prefetch_queue', dataset_opt['num_prefetch_queue'], 1, integral_float=False)
    if dataset_opt.get('type') == 'PairedImageDataset':
        if 'gt_size' not in dataset_opt:
            raise OptionsError(f'{opt_path}: missing key {where}.gt_size (the GT patch size of training)')
        gt_size = dataset_opt['gt_size']
        _whole(opt_path, f'{where}.gt_size', gt_size, 1, integral_float=False)
        if isinstance(scale, int) and scale > 0 and gt_size % scale:
            raise OptionsError(f'{opt_path}: {where}.gt_size {gt_size} must be a multiple of scale {scale} (the LQ '
                               f'patch is gt_size / scale)')
        for key in ('use_hflip', 'use_rot'):
            if key not in dataset_opt:
                raise OptionsError(f'{opt_path}: missing key {where}.{key} (true or false)')
            _flag(opt_path, f'{where}.{key}', dataset_opt[key])


def check_scale_values(opt: Dict[str, Any], opt_path: str) -> None:
    """``scale`` and ``network_g.upscale``, where given, are integers >= 1 (``scale: "4"`` is a string)."""
    if opt.get('scale') is not None:
        _whole(opt_path, 'scale', opt['scale'], 1, integral_float=False, what='the upscaling factor')
    network = opt.get('network_g')
    if isinstance(network, dict) and network.get('upscale') is not None:
        _whole(opt_path, 'network_g.upscale', network['upscale'], 1, integral_float=False)


def check_option_values(opt: Dict[str, Any], opt_path: str, is_train: bool) -> None:
    """Refuse values that BasicSR would fail on late or run wrongly: numbers written as strings (``1e-3``,
    ``"4"``), a non-positive ``total_iter``, zero frequencies, negative batch sizes or workers, a seed that is not
    a number, and the like."""
    _check_exponent_strings(opt, opt_path)
    check_scale_values(opt, opt_path)
    seed = opt.get('manual_seed')
    if seed is not None:
        _whole(opt_path, 'manual_seed', seed, 0, integral_float=False, what='or ~ for a random one')
        if seed > MAX_SEED:
            raise OptionsError(f'{opt_path}: manual_seed must be at most {MAX_SEED}, got {seed}')
    val = opt.get('val')
    if val is not None and not isinstance(val, dict):
        raise OptionsError(f'{opt_path}: val must be a mapping of validation options, got {val!r}')
    if isinstance(val, dict):
        if is_train and 'save_img' not in val:
            raise OptionsError(f'{opt_path}: missing key val.save_img (true or false)')
        if 'save_img' in val:
            _flag(opt_path, 'val.save_img', val['save_img'])
        if is_train:
            if 'val_freq' not in val:
                raise OptionsError(f'{opt_path}: missing key val.val_freq')
            _whole(opt_path, 'val.val_freq', val['val_freq'], 1, what='validate every val_freq iterations')
        elif val.get('save_img') and 'suffix' not in val:
            raise OptionsError(f'{opt_path}: missing key val.suffix (~ for none): BasicSR reads it when save_img is true')
    elif not is_train:
        raise OptionsError(f'{opt_path}: missing key val (save_img, metrics): BasicSR\'s test pipeline reads it')
    if is_train:
        logger = opt.get('logger')
        if not isinstance(logger, dict):
            raise OptionsError(f'{opt_path}: missing key logger (print_freq, save_checkpoint_freq, use_tb_logger)')
        for key, what in (('print_freq', 'log every print_freq iterations'),
                          ('save_checkpoint_freq', 'save every save_checkpoint_freq iterations')):
            if key not in logger:
                raise OptionsError(f'{opt_path}: missing key logger.{key}')
            _whole(opt_path, f'logger.{key}', logger[key], 1, what=what)
        _check_train_section(opt, opt_path)
    datasets = opt.get('datasets')
    for phase, dataset_opt in (datasets.items() if isinstance(datasets, dict) else ()):
        if isinstance(dataset_opt, dict):
            _check_dataset_values(str(phase), dataset_opt, opt.get('scale'), opt_path, is_train)
