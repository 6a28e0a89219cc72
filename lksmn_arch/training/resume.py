"""Find and load the training state to resume from, on CPU or GPU, never trusting a broken file.

Replaces ``basicsr.train.load_resume_state``, which maps states onto ``torch.cuda.current_device()``
(an AssertionError on CPU-only torch), looks for ``experiments/`` relative to the working directory
instead of the run's own folder, and takes the newest ``*.state`` even when it is truncated.

With ``--auto_resume`` a state ``training_states/<iter>.state`` is used only if it and the network
weights saved with it (``models/net_<x>_<iter>.pth`` for each ``network_<x>`` of the options) load with
weights-only loading, hold what BasicSR saves and, for the weights, only finite values; otherwise a
warning names the file and the next older state is tried. Temporary files of interrupted saves
(``.<name>.tmp-<pid>``) never match. A ``path.resume_state`` given in the options must pass the same checks.
"""
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from basicsr.utils import check_resume

from lksmn_arch.errors import TrainingError
from lksmn_arch.utils import checkpoint

logger = logging.getLogger('basicsr')

# Warnings issued before BasicSR's log file exists; LKSMNModel writes them to the log once it does.
pending_warnings: List[str] = []


class UnsafeCheckpointError(TrainingError):
    """A checkpoint that can only be loaded by executing pickled code."""


class ResumeStateError(TrainingError):
    """The training state named by ``path.resume_state`` cannot be used."""


def load_trusted(path: os.PathLike) -> Any:
    """``checkpoint.read_checkpoint`` (weights-only, onto the CPU), with refusals as training errors."""
    try:
        return checkpoint.read_checkpoint(path)
    except checkpoint.UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(str(error)) from None


def _warn(message: str, opt: Dict[str, Any]) -> None:
    if opt.get('rank', 0) != 0:
        return
    logger.warning(message)  # to the console only: BasicSR's log file does not exist yet
    pending_warnings.append(message)


def _state_files(states_dir: Path) -> List[Tuple[int, Path]]:
    found = []
    for path in states_dir.glob('*.state'):
        if path.stem.isdigit() and path.is_file():
            found.append((int(path.stem), path))
    return sorted(found, reverse=True)


def network_files(opt: Dict[str, Any], iteration: int) -> List[Path]:
    """The weight files BasicSR's ``check_resume`` will load with the state of ``iteration``."""
    ignored = opt['path'].get('ignore_resume_networks') or []
    return [Path(opt['path']['models']) / f"net_{key[len('network_'):]}_{iteration}.pth"
            for key in sorted(opt) if key.startswith('network_') and key not in ignored]


def _check_state(state: Any, iteration: Optional[int]) -> None:
    if not isinstance(state, dict):
        raise ValueError('it holds no training state')
    missing = [key for key in ('epoch', 'iter', 'optimizers', 'schedulers') if key not in state]
    if missing:
        raise ValueError(f'it lacks {", ".join(missing)}')
    if type(state['iter']) is not int or state['iter'] < 1 or (iteration is not None and state['iter'] != iteration):
        raise ValueError(f"it holds iteration {state['iter']!r}, not {iteration}")
    if type(state['epoch']) is not int or state['epoch'] < 0:
        raise ValueError(f"its epoch {state['epoch']!r} is not a number >= 0")
    if not isinstance(state['optimizers'], list) or not isinstance(state['schedulers'], list):
        raise ValueError('its optimizers/schedulers are not lists')


def _check_weights(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f'the network weights saved with it, {path}, are missing')
    checkpoint = load_trusted(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('params'), dict):
        raise ValueError(f'{path.name} holds no params')
    from lksmn_arch.utils.checkpoint import check_weights  # floating point and finite, as every reader checks
    for params in checkpoint.values():
        if isinstance(params, dict):
            check_weights({name: t for name, t in params.items() if torch.is_tensor(t)}, path.name)


def verify(iteration: Optional[int], state_path: Path, opt: Dict[str, Any]) -> Dict[str, Any]:
    """The state at ``state_path`` if it and its network weights are complete and loadable; raises otherwise."""
    state = load_trusted(state_path)
    _check_state(state, iteration)
    for weights in network_files(opt, state['iter']):
        try:
            _check_weights(weights)
        except UnsafeCheckpointError:
            raise
        except FileNotFoundError:
            raise
        except Exception as error:
            raise ValueError(f'{weights.name} is unreadable ({type(error).__name__}: {error})') from error
    return state


def load_resume_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Resume state for BasicSR's train pipeline: the newest verified state with ``--auto_resume``,
    or ``path.resume_state``; states are loaded on the CPU (optimizers move them to their device)."""
    pending_warnings.clear()
    if opt['auto_resume']:
        states_dir = Path(opt['path']['training_states'])
        candidates = _state_files(states_dir) if states_dir.is_dir() else []
        for iteration, path in candidates:
            try:
                state = verify(iteration, path, opt)
            except Exception as error:  # truncated, corrupt, unsafe or incomplete: fall back to an older one
                reason = error if isinstance(error, UnsafeCheckpointError) else f'{type(error).__name__}: {error}'
                _warn(f'Skipping training state {path}: unreadable or incomplete ({reason}); '
                      f'trying an older one.', opt)
                continue
            if iteration != candidates[0][0]:
                _warn(f'Resuming from the older training state {path} (iteration {iteration}) because the newer '
                      f'ones could not be used.', opt)
            opt['path']['resume_state'] = str(path)
            check_resume(opt, state['iter'])
            return state
        if candidates:
            _warn(f'None of the {len(candidates)} training states in {states_dir} can be used: starting from '
                  f'iteration 0 (BasicSR archives the old experiment folder as <name>_archived_<time>).', opt)
        return None
    path = opt['path'].get('resume_state')
    if not path:
        return None
    try:
        state = verify(None, Path(path), opt)
    except UnsafeCheckpointError:
        raise
    except Exception as error:
        raise ResumeStateError(f'path.resume_state {path} cannot be used: {type(error).__name__}: {error}') from error
    check_resume(opt, state['iter'])
    return state
