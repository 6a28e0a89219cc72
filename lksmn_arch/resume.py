"""Find and load the training state to resume from, on CPU or GPU, never trusting a broken file.

Replaces ``basicsr.train.load_resume_state``, which maps states onto ``torch.cuda.current_device()``
(an AssertionError on CPU-only torch), looks for ``experiments/`` relative to the working directory
instead of the run's own folder, and takes the newest ``*.state`` even when it is truncated.
"""
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from basicsr.utils import check_resume

logger = logging.getLogger('basicsr')


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that can only be loaded by executing pickled code."""


def load_trusted(path: os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` onto the CPU; files needing pickled code are refused."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        if 'Weights only load failed' in str(error) or 'weights_only' in str(error):
            raise UnsafeCheckpointError(
                f'{path}: refused, it contains pickled Python objects that would run code when loaded '
                f'(weights-only loading rejected it). Only plain tensor checkpoints are loaded.') from error
        raise


def _state_files(states_dir: Path) -> List[Tuple[int, Path]]:
    found = []
    for path in states_dir.glob('*.state'):
        if path.stem.isdigit():
            found.append((int(path.stem), path))
    return sorted(found, reverse=True)


def _verify(iteration: int, state_path: Path, models_dir: Path) -> Optional[Dict[str, Any]]:
    """The state if it and the network weights saved with it load; None (with a warning) otherwise."""
    try:
        state = load_trusted(state_path)
        if not isinstance(state, dict) or state.get('iter') != iteration:
            raise ValueError(f"it holds no training state for iteration {iteration}")
        for weights in sorted(models_dir.glob(f'net_*_{iteration}.pth')):
            load_trusted(weights)
        if not any(models_dir.glob(f'net_*_{iteration}.pth')):
            raise FileNotFoundError(f'no network weights net_*_{iteration}.pth in {models_dir}')
    except UnsafeCheckpointError as error:
        logger.warning(f'Skipping training state {state_path}: {error}')
        return None
    except Exception as error:  # truncated, corrupt or incomplete: fall back to an older one
        logger.warning(f'Skipping training state {state_path}: unreadable or incomplete ({error})')
        print(f'Warning: skipping training state {state_path}: unreadable or incomplete ({error})', flush=True)
        return None
    return state


def load_resume_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Resume state for BasicSR's train pipeline: the newest verified state with ``--auto_resume``,
    or ``path.resume_state``; states are loaded on the CPU (optimizers move them to their device)."""
    if opt['auto_resume']:
        states_dir = Path(opt['path']['training_states'])
        models_dir = Path(opt['path']['models'])
        for iteration, path in _state_files(states_dir):
            state = _verify(iteration, path, models_dir)
            if state is not None:
                opt['path']['resume_state'] = str(path)
                check_resume(opt, state['iter'])
                return state
        return None
    path = opt['path'].get('resume_state')
    if not path:
        return None
    state = load_trusted(path)
    check_resume(opt, state['iter'])
    return state
