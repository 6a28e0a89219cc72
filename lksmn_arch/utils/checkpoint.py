"""Read LKSMN checkpoints safely and rebuild the network they were trained with.

BasicSR saves ``{'params': state_dict}`` (and ``{'params_ema': ...}`` when EMA is on); other tools save
a bare state dict, or a ``.safetensors`` file (read as a bare state dict). Checkpoints are read with
``torch.load(weights_only=True)``, which never runs pickled code, so a downloaded file cannot execute
anything; a file that needs code is refused.

The hyperparameters are read back from tensor shapes, so a checkpoint is enough to rebuild its network:

    model, config = build_model_from_checkpoint('net_g_latest.pth')
"""
import json
import math
import os
import pickle
import re
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

import torch

from lksmn_arch.archs.lksmn_arch import LKSMN, NAMED_CONFIGS, SUPPORTED_SCALES
from lksmn_arch.errors import first_line

PathLike = Union[str, os.PathLike]
StateDict = Dict[str, torch.Tensor]

# Keys every LKSMN state dict has, whatever its hyperparameters (block 0 and group 0 always exist;
# MDTA, the feed-forward and MLFA are optional, and which of them is present is read from the keys).
REQUIRED_KEYS = (
    'conv_first.weight',
    'blocks.0.msma.lkcd.0.local.weight',
    'blocks.0.msma.lkcd.0.dilated.weight',
    'blocks.0.msma.attention_in.weight',
    'upsampler.0.weight',
)
# Where shapes allow several values, the ones of a named configuration (v2, then v1) are reported.
KNOWN_LKCD_KERNELS = tuple(tuple(config['lkcd_kernels']) for config in reversed(list(NAMED_CONFIGS.values())))
KNOWN_FFN_EXPANSIONS = tuple(float(config['ffn_expansion']) for config in reversed(list(NAMED_CONFIGS.values())))
DEFAULT_FFN_EXPANSION = KNOWN_FFN_EXPANSIONS[0]
DEFAULT_NUM_HEADS = 4

_BLOCK_KEY = re.compile(r'^blocks\.(\d+)\.')
_LKCD_KEY = re.compile(r'^blocks\.0\.msma\.lkcd\.(\d+)\.local\.weight$')
_UNSAFE_GLOBAL = re.compile(r'GLOBAL (\S+) was not an allowed global')


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: refused, corrupt, or not an LKSMN checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A file that ``torch.load(weights_only=True)`` refused: loading it would run pickled code."""


def read_checkpoint(path: PathLike) -> object:
    """``torch.load(path, weights_only=True)`` onto the CPU, never running pickled code.

    Every checkpoint the project reads goes through here (upscaling, export, pretrained weights, resume).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file needs pickled code to load (the message says which and why).
        CheckpointError: the file is corrupt, truncated or not a PyTorch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist (or is not a file)')
    if path.suffix.lower() == '.safetensors':
        return read_safetensors(path)
    check_declared_size(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        raise _explain_refusal(path, error) from error
    except OSError as error:
        raise CheckpointError(f'cannot read checkpoint {path}: {error}') from error
    except Exception as error:  # torch.load fails on garbage with arbitrary types (EOFError, IndexError, ...)
        raise CheckpointError(f'cannot read checkpoint {path}: it is not a valid PyTorch file, or it is corrupt '
                              f'or truncated ({type(error).__name__}: {first_line(error)})') from error


MAX_EXPANSION = 4  # torch.save stores its entries uncompressed: what a file unpacks to is about its own size
MAX_EXPANSION_SLACK = 64 * 2 ** 20


def check_declared_size(path: Path) -> None:
    """Refuse, before anything is unpacked, a checkpoint whose zip directory declares far more data than the
    file holds (a compression bomb: 1 MB that unpacks to gigabytes). Files that are not zip archives (the legacy
    format, or garbage) are left to ``torch.load``."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    size = path.stat().st_size
    if declared > MAX_EXPANSION * size + MAX_EXPANSION_SLACK:
        raise CheckpointError(f'refusing checkpoint {path}: its archive declares {declared / 2 ** 20:.0f} MiB of data '
                              f'in a {size / 2 ** 20:.1f} MiB file (torch.save writes uncompressed entries; this '
                              'looks like a compression bomb)')


def read_safetensors(path: Path) -> StateDict:
    """The tensors of a ``.safetensors`` file (a format that holds no code), on the CPU."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f'{path} is a .safetensors file: pip install safetensors to read it') from None
    try:
        return load_file(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f'cannot read checkpoint {path}: not a valid .safetensors file '
                              f'({first_line(error)})') from error


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: PathLike, config: Mapping[str, object]) -> Path:
    """Write ``state_dict`` as ``.safetensors`` (atomically), with the network configuration as metadata."""
    from safetensors.torch import save_file

    from lksmn_arch.utils.atomic import new_file_mode, replace_atomically
    path = Path(path)
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    metadata = {'format': 'pt', 'architecture': 'LKSMN', 'lksmn_config': json.dumps(config)}

    def write(temp: Path) -> None:
        try:
            save_file(tensors, str(temp), metadata=metadata)
        except Exception as error:  # safetensors' own error type for a failed write (full disk, I/O error)
            if isinstance(error, OSError):
                raise
            raise OSError(f'cannot write {path}: {first_line(error)}') from error
        os.chmod(temp, new_file_mode())  # safetensors may write its file private (0600): give it a file's usual mode

    replace_atomically(path, write)
    return path


def load_state_dict(path: PathLike) -> StateDict:
    """Read the state dict of a checkpoint file, without running any pickled code.

    Takes ``params_ema`` if present, else ``params`` (BasicSR's keys), else the file's top-level dict
    if it maps names to tensors. A ``module.`` prefix (DataParallel) is removed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file needs pickled code (``weights_only=True`` refused it), is corrupt or
            truncated, or holds no state dict.
    """
    return _select_state_dict(Path(path), read_checkpoint(path))


def _explain_refusal(path: Path, error: pickle.UnpicklingError) -> CheckpointError:
    message = str(error)
    unsafe = _UNSAFE_GLOBAL.search(message)
    if unsafe:
        return UnsafeCheckpointError(
            f'refusing checkpoint {path}: torch.load(weights_only=True) refused it because it needs pickled '
            f'Python code ({unsafe.group(1)}) to load, so it is not a plain tensor checkpoint. Loading it would '
            f'run that code; if you trust its source, re-save only its state dict '
            f'(torch.save({{"params": model.state_dict()}}, ...)) and use that file.')
    if 'Unsupported operand' in message and not _starts_like_a_pickle(path):
        return CheckpointError(f'cannot read checkpoint {path}: it is not a PyTorch file (neither the zip archive '
                               'torch.save writes nor a pickle): damaged, or not a checkpoint at all')
    if 'Unsupported operand' in message:  # pickle opcodes torch.save never writes (FRAME, 149: pickle.dump's)
        return UnsafeCheckpointError(
            f'refusing checkpoint {path}: it is a plain Python pickle (written by pickle.dump), not a PyTorch '
            f'checkpoint; a pickle can hold code, so it is not loaded. Save the weights with torch.save '
            f'({{"params": model.state_dict()}}, ...) and use that file.')
    if 'Weights only load failed' in message:
        return UnsafeCheckpointError(
            f'refusing checkpoint {path}: torch.load(weights_only=True) refused it, so it is not a plain tensor '
            f'checkpoint ({_weights_only_reason(message)})')
    return CheckpointError(f'cannot read checkpoint {path}: it is not a valid PyTorch file, or it is corrupt '
                           f'({_weights_only_reason(message)})')


def _starts_like_a_pickle(path: Path) -> bool:
    """True when the file opens with a pickle protocol header (PROTO, then protocol 2 to 5)."""
    try:
        with open(path, 'rb') as handle:
            head = handle.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _weights_only_reason(message: str) -> str:
    for line in message.splitlines():
        if 'WeightsUnpickler error' in line:
            reason = line.split('WeightsUnpickler error:', 1)[1].strip()
            if reason:
                return reason
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-2] if len(lines) > 1 else (lines[0] if lines else 'no details')


def _is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and len(value) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _select_state_dict(path: Path, data: object) -> StateDict:
    if isinstance(data, Mapping):
        for key in ('params_ema', 'params'):
            if key in data and _is_state_dict(data[key]):
                return _strip_module_prefix(dict(data[key]))
        if _is_state_dict(data):
            return _strip_module_prefix(dict(data))
        keys = ', '.join(repr(k) for k in list(data)[:8])
        raise CheckpointError(f'checkpoint {path} holds no state dict: expected "params_ema", "params" or a dict of '
                              f'tensors, found keys {keys or "(none)"}')
    raise CheckpointError(f'checkpoint {path} holds no state dict: expected a dict, found {type(data).__name__}')


def _strip_module_prefix(state_dict: StateDict) -> StateDict:
    if all(k.startswith('module.') for k in state_dict):
        return {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


def _lkcd_kernel_size(local_kernel: int, dilated_kernel: int, group: int, num_groups: int) -> Tuple[int, int]:
    """(K, d) that rebuild an LKCD with these kernel sizes; the default pair when it fits.

    LKCD(K, d) has a (2d-1)^2 local kernel and a dilated kernel of ceil(K/d) rounded up to odd, so every
    K in ((k-2)d, kd] gives the same network. Without a matching default we report the dilated conv's
    receptive field d(k-1)+1, which is in that range.
    """
    if local_kernel % 2 == 0:
        raise CheckpointError(f'LKCD group {group} has an even local kernel ({local_kernel}); LKSMN uses (2d-1)')
    if dilated_kernel % 2 == 0:
        raise CheckpointError(f'LKCD group {group} has an even dilated kernel ({dilated_kernel}); LKSMN uses odd')
    dilation = (local_kernel + 1) // 2

    def fits(kernel: int) -> bool:
        size = math.ceil(kernel / dilation)
        return size + 1 - size % 2 == dilated_kernel

    candidates: List[Tuple[int, int]] = []
    for known in KNOWN_LKCD_KERNELS:
        if num_groups == len(known):
            candidates.append(known[group])
    for known in KNOWN_LKCD_KERNELS:
        candidates.extend(known)
    for kernel, default_dilation in candidates:
        if default_dilation == dilation and fits(kernel):
            return kernel, dilation
    return dilation * (dilated_kernel - 1) + 1, dilation


def _ffn_expansion(channels: int, hidden: int) -> float:
    """An expansion e with int(channels * e) == hidden (GatedFeedForward's width); 2.0 when it fits."""
    exact = hidden / channels
    for candidate in (*KNOWN_FFN_EXPANSIONS, round(exact, 4), exact, (hidden + 0.5) / channels):
        if candidate > 0 and int(channels * candidate) == hidden:
            return float(candidate)
    raise CheckpointError(f'no ffn_expansion gives a hidden width of {hidden} for {channels} channels')


def _size(state_dict: Mapping[str, torch.Tensor], key: str, axis: int, rank: int = 4) -> int:
    """``state_dict[key].shape[axis]``, after checking that the tensor has ``rank`` dimensions (an LKSMN
    convolution weight has 4); CheckpointError naming the tensor otherwise."""
    shape = tuple(state_dict[key].shape)
    if len(shape) != rank:
        raise CheckpointError(f'not an LKSMN checkpoint: tensor {key} has shape {list(shape)}, where LKSMN has a '
                              f'{rank}-dimensional tensor')
    return int(shape[axis])


def infer_lksmn_config(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, object]:
    """LKSMN keyword arguments that rebuild the network of ``state_dict``, read from its tensor shapes.

    Raises:
        CheckpointError (a ValueError): the state dict is not an LKSMN one (it names the missing keys),
            or its shapes are inconsistent.
    """
    missing = [key for key in REQUIRED_KEYS if key not in state_dict]
    if missing:
        raise CheckpointError(f'not an LKSMN checkpoint: missing keys {", ".join(missing)}')

    num_feat, num_in_ch = _size(state_dict, 'conv_first.weight', 0), _size(state_dict, 'conv_first.weight', 1)
    num_out_ch = num_in_ch

    up_channels = _size(state_dict, 'upsampler.0.weight', 0)
    scale = math.isqrt(up_channels // num_out_ch) if up_channels % num_out_ch == 0 else 0
    if scale * scale * num_out_ch != up_channels or scale not in SUPPORTED_SCALES:
        raise CheckpointError(f'upsampler.0.weight has {up_channels} output channels, which is not '
                              f'{num_out_ch} x scale^2 for a scale in {list(SUPPORTED_SCALES)}')

    block_ids = {int(m.group(1)) for m in map(_BLOCK_KEY.match, state_dict) if m}
    num_block = max(block_ids) + 1
    absent = sorted(set(range(num_block)) - block_ids)
    if absent:
        raise CheckpointError(f'not an LKSMN checkpoint: blocks {absent} are missing (highest block is '
                              f'{num_block - 1})')
    mlfa = 'mlfa.fuse.weight' in state_dict
    if mlfa:
        fuse_in = _size(state_dict, 'mlfa.fuse.weight', 1)
        if fuse_in != num_feat * (num_block + 1):
            raise CheckpointError(f'mlfa.fuse.weight takes {fuse_in} channels but {num_block} blocks of {num_feat} '
                                  f'channels make {num_feat * (num_block + 1)}')

    mdta = 'blocks.0.mdta.temperature' in state_dict
    num_heads = _size(state_dict, 'blocks.0.mdta.temperature', 0, rank=3) if mdta else DEFAULT_NUM_HEADS
    if 'blocks.0.ffn.dwconv.weight' in state_dict:
        ffn, hidden = 'gated_dconv', _size(state_dict, 'blocks.0.ffn.project_in.weight', 0) // 2
    elif 'blocks.0.ffn.spatial.weight' in state_dict:
        ffn, hidden = 'conv_mixer', _size(state_dict, 'blocks.0.ffn.spatial.weight', 0)
    else:
        ffn, hidden = 'none', None
    ffn_expansion = _ffn_expansion(num_feat, hidden) if hidden is not None else DEFAULT_FFN_EXPANSION
    if 'blocks.0.norm_spatial.running_mean' in state_dict:
        norm = 'batchnorm'
    elif 'blocks.0.norm_spatial.weight' in state_dict:
        norm = 'layernorm'
    else:
        norm = 'none'

    groups = sorted(int(m.group(1)) for m in map(_LKCD_KEY.match, state_dict) if m)
    if groups != list(range(len(groups))):
        raise CheckpointError(f'LKCD groups of block 0 are not numbered 0..n-1: {groups}')
    lkcd_kernels = []
    for g in groups:
        local, dilated = f'blocks.0.msma.lkcd.{g}.local.weight', f'blocks.0.msma.lkcd.{g}.dilated.weight'
        if dilated not in state_dict:
            raise CheckpointError(f'not an LKSMN checkpoint: missing key {dilated}')
        lkcd_kernels.append(_lkcd_kernel_size(_size(state_dict, local, -1), _size(state_dict, dilated, -1), g,
                                              len(groups)))

    return {
        'upscale': scale,
        'num_in_ch': num_in_ch,
        'num_out_ch': num_out_ch,
        'num_feat': num_feat,
        'num_block': num_block,
        'lkcd_kernels': tuple(lkcd_kernels),
        'num_heads': num_heads,
        'ffn_expansion': ffn_expansion,
        'norm': norm,
        'ffn': ffn,
        'mdta': mdta,
        'mlfa': mlfa,
    }


def check_weights(state_dict: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """Raise CheckpointError naming the first tensor that cannot be a trained LKSMN weight: one that is not
    floating point (weights cast to int8 or bool give black images with no error) or that holds NaN or inf.
    BatchNorm's integer ``num_batches_tracked`` counters are the exception."""
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            if key.endswith('num_batches_tracked'):
                continue
            raise CheckpointError(f'checkpoint {path}: tensor {key} is {str(tensor.dtype).replace("torch.", "")}, '
                                  'not floating point; LKSMN weights are float32/16 (was the file converted or '
                                  'quantised?)')
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f'checkpoint {path}: tensor {key} holds {bad} NaN or inf value(s); refusing '
                                  'weights that cannot give a valid image (was the training diverging?)')



def build_model_from_checkpoint(path: PathLike) -> Tuple[LKSMN, Dict[str, object]]:
    """Load ``path``, infer its hyperparameters and return ``(model, config)``: an eval-mode LKSMN on the CPU.

    Weights are loaded with ``strict=True``, so every tensor of the file must fit the rebuilt network.

    Raises:
        FileNotFoundError / CheckpointError: see ``load_state_dict`` and ``infer_lksmn_config``, and non-finite
            weights that are not floating point or not finite (``check_weights``); the message names the file.
    """
    state_dict = load_state_dict(path)
    check_weights(state_dict, path)
    try:
        config = infer_lksmn_config(state_dict)
        model = LKSMN(**config)
        model.load_state_dict(state_dict, strict=True)
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f'checkpoint {path}: {error}') from error
    return model.eval(), config
