"""Equal-budget study: train several networks with one recipe through BasicSR, score and time each.

Every network is trained from the same option template (the embedded demo's: ``lksmn_arch.training.demo.demo_options``),
on the same data, with the same seeds, through BasicSR's own train and test pipelines
(``lksmn_arch.training.pipeline.run_training`` / ``run_testing``). Each trained network is scored on held-out images
(PSNR/SSIM on the Y channel, border = scale, BasicSR's metrics) next to MATLAB bicubic; then, in a separate
phase after all training, every network is timed on the CPU in fp32 (``lksmn_arch.inference.latency.fastest_latency``:
its fastest inference path, all models interleaved in one process). Parameters and Multi-Adds (1280x720
output) complete the table.

    python benchmarks/equal_budget.py --nets v2 safmn --iters 200 --seeds 0 --out /tmp/eb_smoke
    python benchmarks/equal_budget.py                      # the whole built-in table, 2000 iterations, seeds 0 1
    python benchmarks/equal_budget.py --help

Networks are built-in entries of ``NETWORKS`` (below) or ``NAME=LKSMN:{json keyword arguments}``. Add an
entry to ``NETWORKS`` to make it a built-in; LKSMN entries also get an option file for full DF2K training
(``--write-options options/ablation``, checked by the tests).
"""
import argparse
import contextlib
import copy
import gc
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import lksmn_arch  # noqa: F401  (compatibility fixes before basicsr; registers LKSMN)
import cv2
import numpy as np
import torch
import yaml
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from lksmn_arch.archs.lksmn_arch import LKSMN, NAMED_CONFIGS, SUPPORTED_SCALES
from lksmn_arch.utils.atomic import replace_atomically
from lksmn_arch.utils.checkpoint import load_state_dict
from lksmn_arch.archs.complexity import count_multi_adds, count_parameters, lr_size_for_output
from lksmn_arch.data.dataset_checks import DatasetError, check_dataset_options
from lksmn_arch.data.sample_photos import TEST_PHOTOS, TRAIN_PHOTOS, write_photos
from lksmn_arch.training.demo import demo_options
from lksmn_arch.inference.latency import RUNTIME_MODULES, runtime_installed
from lksmn_arch.training.pipeline import run_testing, run_training
from lksmn_arch.data.prepare import (PrepareError, SubImageSettings, bicubic_upscale, list_images, prepare_benchmark,
                                     prepare_div2k)

PROG = 'python benchmarks/equal_budget.py'
REPO = Path(__file__).resolve().parents[1]
TEMPLATE_OPTIONS = REPO / 'options' / 'train_LKSMN_x4.yml'
ABLATION_DIR = 'options/ablation'  # as written in the generated files' comments
LR_PATCH = 16  # LR training patch side: the demo's (gt_size 64 at x4), the same at every scale
PHOTO_GRID = (128, 64)  # sub-image crop/step (HR pixels) for the bundled photos, as the demo
FOLDER_GRID = (480, 240)  # for a user's HR folders (DIV2K), as lksmn-prepare's default
FINAL_CHECKPOINT = 'net_g_latest.pth'
SCORE_FILE = 'score.json'
RUN_FILE = 'run.json'
TIMING_FILE = 'timing.json'


class HarnessError(Exception):
    """Bad input or a results folder that cannot be used: one line, exit status 2, before any training."""


# ----------------------------------------------------------------------------------------------------
# The networks


@dataclass(frozen=True)
class NetworkEntry:
    """A built-in network: a BasicSR ``ARCH_REGISTRY`` type and its keyword arguments (``upscale`` is added)."""

    arch: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    note: str = ''


def _lksmn(note: str, base: str = 'v2', **overrides: Any) -> NetworkEntry:
    """An LKSMN entry: a named configuration (lksmn_arch NAMED_CONFIGS) with some keywords changed.

    Entries spell out every keyword, so that a change of LKSMN's defaults never changes what an entry trains.
    """
    kwargs = {key: [list(pair) for pair in value] if key == 'lkcd_kernels' else value
              for key, value in {**NAMED_CONFIGS[base], **overrides}.items()}
    return NetworkEntry('LKSMN', kwargs, note)


# The study's table. Add a line to add a built-in network; LKSMN entries get options/ablation/ files
# (regenerate them with --write-options options/ablation). Keys must be plain names (see NAME_PATTERN).
# The ablations change one thing of the default (v2); removals (no MDTA, MLFA, feed-forward) are not
# compensated, as in the paper's ablation table; the other changes keep the budget within 1% of v2's, but
# single_lkcd (+3.1%: one dense 48x48 pointwise conv where v2 has three 16x16 groups).
NETWORKS: Dict[str, NetworkEntry] = {
    'v2': _lksmn("LKSMN's default (NAMED_CONFIGS['v2']); the ablations below change one thing of it"),
    'nomdta': _lksmn('no MDTA channel attention', mdta=False),
    'single_lkcd': _lksmn('single-scale LKCD (one group, 21x21 reach)', lkcd_kernels=[[21, 3]]),
    'nomlfa': _lksmn('no MLFA (last block + long skip)', mlfa=False),
    'ffn_gated': _lksmn("Restormer's gated-dconv feed-forward (x5.6, same budget)", ffn='gated_dconv',
                        ffn_expansion=5.6),
    'ffn_none': _lksmn('no feed-forward', ffn='none'),
    'norm_layernorm': _lksmn('channel LayerNorm (does not fold at inference)', norm='layernorm'),
    'norm_none': _lksmn('no normalisation', norm='none'),
    'w42x4': _lksmn('4 blocks of 42 channels, 3 heads', num_feat=42, num_block=4, num_heads=3),
    'w57x2': _lksmn('2 blocks of 57 channels, 3 heads', num_feat=57, num_block=2, num_heads=3),
    'v1': _lksmn("LKSMN's first default (NAMED_CONFIGS['v1'])", base='v1'),
    'v1_norm_none': _lksmn('v1 without normalisation', base='v1', norm='none'),
    'safmn': NetworkEntry('SpandrelSAFMN', {}, "SAFMN (dim 36, 8 blocks), spandrel's class"),
    'span': NetworkEntry('SpandrelSPAN', {}, "SPAN (48 channels), spandrel's class"),
}
# What runs without --nets: every entry but SPAN (426K parameters at x4, not an equal-budget peer).
DEFAULT_NETS = tuple(name for name in NETWORKS if name != 'span')
NAME_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$')


def _peer_classes() -> Dict[str, type]:
    """Thin BasicSR-style subclasses of spandrel's peer architectures (constructor takes ``upscale``)."""
    from spandrel.architectures.SAFMN import SAFMN
    from spandrel.architectures.SPAN import SPAN

    class SpandrelSAFMN(SAFMN):
        """spandrel's SAFMN (Sun et al., ICCV 2023) with BasicSR-style keyword arguments."""

        def __init__(self, upscale: int = 4, dim: int = 36, n_blocks: int = 8, ffn_scale: float = 2.0) -> None:
            super().__init__(dim=dim, n_blocks=n_blocks, ffn_scale=ffn_scale, upscaling_factor=upscale)

    class SpandrelSPAN(SPAN):
        """spandrel's SPAN (Wan et al., CVPRW 2024) with BasicSR-style keyword arguments."""

        def __init__(self, upscale: int = 4, num_in_ch: int = 3, num_out_ch: int = 3, feature_channels: int = 48,
                     bias: bool = True) -> None:
            super().__init__(num_in_ch=num_in_ch, num_out_ch=num_out_ch, feature_channels=feature_channels,
                             upscale=upscale, bias=bias)

    return {'SpandrelSAFMN': SpandrelSAFMN, 'SpandrelSPAN': SpandrelSPAN}


def register_peers() -> bool:
    """Register the spandrel peers in BasicSR's ``ARCH_REGISTRY`` unless a class of that name is there.

    Safe to call again and from a second copy of this module (the script run as ``__main__`` and imported):
    the first registration stays. Returns False when spandrel is not installed (the ``bench`` extra).
    """
    if all(name in ARCH_REGISTRY for name in ('SpandrelSAFMN', 'SpandrelSPAN')):
        return True
    try:
        classes = _peer_classes()
    except ImportError:
        return False
    for name, cls in classes.items():
        if name not in ARCH_REGISTRY:
            ARCH_REGISTRY.register(cls)
    return True


register_peers()


@dataclass(frozen=True)
class Network:
    """One network of a study: its name, ``ARCH_REGISTRY`` type and keyword arguments (without ``upscale``)."""

    name: str
    arch: str
    kwargs: Dict[str, Any]

    def options(self, scale: int) -> Dict[str, Any]:
        """Its BasicSR ``network_g`` entry at ``scale``."""
        return {'type': self.arch, 'upscale': scale, **copy.deepcopy(self.kwargs)}

    def describe(self) -> str:
        """Type and overrides, e.g. ``LKSMN {"mdta": false}``."""
        return f'{self.arch} {json.dumps(self.kwargs)}' if self.kwargs else self.arch


def parse_network(spec: str) -> Network:
    """``NAME`` (a built-in entry) or ``NAME=BASE:{json}`` where BASE is ``LKSMN`` or a built-in entry.

    With a built-in BASE the JSON overrides that entry's keyword arguments. Raises HarnessError.
    """
    name, has_base, rest = spec.partition('=')
    name = name.strip()
    if not has_base:
        if name not in NETWORKS:
            raise HarnessError(f'unknown network {name!r}: built-in entries are {", ".join(NETWORKS)}; '
                               f'or give NAME=LKSMN:{{json keyword arguments}}')
        entry = NETWORKS[name]
        return Network(name, entry.arch, copy.deepcopy(dict(entry.kwargs)))
    if not NAME_PATTERN.match(name) or 'debug' in name.lower():
        raise HarnessError(f'network name {name!r} in {spec!r} must be letters, digits and _.+- (at most 64, '
                           f'not starting with a symbol, without "debug", which BasicSR treats specially)')
    if name in NETWORKS:
        raise HarnessError(f'network name {name!r} in {spec!r} is a built-in entry; choose another name')
    base, _, text = rest.partition(':')
    base = base.strip()
    if base == 'LKSMN':
        arch, kwargs = 'LKSMN', {}
    elif base in NETWORKS:
        arch, kwargs = NETWORKS[base].arch, copy.deepcopy(dict(NETWORKS[base].kwargs))
    else:
        raise HarnessError(f'network {spec!r}: unknown base {base!r}; use LKSMN or a built-in entry '
                           f'({", ".join(NETWORKS)})')
    if text.strip():
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as error:
            raise HarnessError(f'network {name!r}: {text!r} is not valid JSON ({error})') from None
        if not isinstance(overrides, dict):
            raise HarnessError(f'network {name!r}: keyword arguments must be a JSON object {{...}}, got {text!r}')
        if 'upscale' in overrides:
            raise HarnessError(f'network {name!r}: do not set upscale, it comes from --scale')
        kwargs.update(overrides)
    return Network(name, arch, kwargs)


def parse_networks(specs: Sequence[str]) -> List[Network]:
    """Parse ``--nets``; a name given twice is an error."""
    networks = [parse_network(spec) for spec in specs]
    seen = set()
    for network in networks:
        if network.name in seen:
            raise HarnessError(f'network {network.name!r} is listed twice in --nets')
        seen.add(network.name)
    return networks


def build_network(network: Network, scale: int, device: Optional[str] = None) -> nn.Module:
    """Instantiate ``network`` at ``scale`` from ``ARCH_REGISTRY`` (on ``device``, e.g. 'meta', if given).

    Raises HarnessError naming the network for an unknown type, keyword or invalid value.
    """
    if network.arch not in ARCH_REGISTRY:
        hint = ' (install the bench extra: pip install -e ".[bench]", for spandrel)' \
            if network.arch.startswith('Spandrel') else ''
        raise HarnessError(f'network {network.name!r}: {network.arch} is not registered in BasicSR{hint}')
    cls = ARCH_REGISTRY.get(network.arch)
    try:
        with torch.device(device) if device else contextlib.nullcontext():
            return cls(upscale=scale, **copy.deepcopy(network.kwargs))
    except (TypeError, ValueError, RuntimeError, AssertionError) as error:
        raise HarnessError(f'network {network.name!r} ({network.describe()}): {_one_line(error)}') from None


def inference_parameters(model: nn.Module) -> int:
    """Trainable parameters of the network as it runs at inference.

    Re-parameterised blocks (SPAN's Conv3XC: modules with ``eval_conv`` and training branches ``conv``,
    ``sk``) count only their inference conv, as their papers count them.
    """
    total = count_parameters(model)
    for module in model.modules():
        if all(hasattr(module, name) for name in ('eval_conv', 'conv', 'sk')):
            total -= count_parameters(module.conv) + count_parameters(module.sk)
    return total


def check_network(network: Network, scale: int) -> Dict[str, int]:
    """Build ``network`` on the meta device and run one meta forward at the 720p-output size.

    Returns its parameters and Multi-Adds; raises HarnessError naming it when it cannot be built or run.
    """
    model = build_network(network, scale, device='meta')
    height, width = lr_size_for_output(scale)
    try:
        multi_adds = count_multi_adds(model, (1, 3, height, width))
    except Exception as error:  # a configuration that builds but cannot run (shapes)
        raise HarnessError(f'network {network.name!r} ({network.describe()}) builds but its forward fails: '
                           f'{_one_line(error)}') from None
    return {'params': inference_parameters(model), 'multi_adds': int(multi_adds)}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0]}' if text else type(error).__name__


# ----------------------------------------------------------------------------------------------------
# Ablation option files (full DF2K training), generated from options/train_LKSMN_x4.yml


def lksmn_defaults() -> Dict[str, Any]:
    """LKSMN's keyword arguments (except ``upscale``) with their default values, in signature order."""
    defaults = {}
    for name, parameter in inspect.signature(LKSMN.__init__).parameters.items():
        if parameter.kind is parameter.KEYWORD_ONLY and name != 'upscale':
            defaults[name] = parameter.default
    return json.loads(json.dumps(defaults))  # tuples -> lists, as YAML and JSON write them


def ablation_option_files(template: Path = TEMPLATE_OPTIONS) -> Dict[str, str]:
    """{file name: text} of ``train_LKSMN_x4_<entry>.yml`` for every LKSMN entry of ``NETWORKS``.

    Each is the template with its ``name`` and ``network_g`` replaced: ``network_g`` spells out every LKSMN
    keyword argument (defaults plus the entry's overrides), so a change of LKSMN's defaults shows up as a
    change of these files.
    """
    text = template.read_text()
    lines = text.splitlines(keepends=True)
    name_line = [i for i, line in enumerate(lines) if line.startswith('name:')]
    start = [i for i, line in enumerate(lines) if line.rstrip() == 'network_g:']
    if len(name_line) != 1 or len(start) != 1:
        raise RuntimeError(f'{template}: expected one top-level "name:" and one "network_g:" line')
    end = start[0] + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in ' \t#'):
        end += 1
    while lines[end - 1].strip() == '' or lines[end - 1].lstrip().startswith('#'):
        end -= 1  # keep the blank line (and comments) before the next top-level key
    old_name = lines[name_line[0]].split(':', 1)[1].strip()
    files = {}
    for entry_name, entry in NETWORKS.items():
        if entry.arch != 'LKSMN':
            continue
        file_name = f'train_LKSMN_x4_{entry_name}.yml'
        new_name = f'LKSMN_x4_{entry_name}_DF2K'
        kwargs = {**lksmn_defaults(), **json.loads(json.dumps(dict(entry.kwargs)))}
        network = ['network_g:\n', '  type: LKSMN\n', '  upscale: 4\n']
        network += [f'  {key}: {json.dumps(value)}\n' for key, value in kwargs.items()]
        body = lines[:start[0]] + network + lines[end:]
        body[name_line[0]] = f'name: {new_name}\n'
        header = [
            f'# GENERATED by `{PROG} --write-options {ABLATION_DIR}` from options/train_LKSMN_x4.yml\n',
            '# and the NETWORKS table of benchmarks/equal_budget.py; edit those, not this file.\n',
            f'# Ablation {entry_name!r}: {entry.note}; LKSMN overrides {json.dumps(dict(entry.kwargs))}.\n',
            '#\n',
        ]
        content = ''.join(body).replace(old_name, new_name).replace('options/train_LKSMN_x4.yml',
                                                                   f'{ABLATION_DIR}/{file_name}')
        files[file_name] = ''.join(header) + content
    return files


def write_ablation_options(folder: Path) -> List[Path]:
    """Write ``ablation_option_files()`` into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in ablation_option_files().items():
        path = folder / file_name
        replace_atomically(path, lambda temp, text=text: temp.write_text(text), durable=False)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class DataSpec:
    """Where training and held-out data come from: the bundled photos, HR folders or GT/LQ folders."""

    train_hr: Optional[Path] = None
    test_hr: Optional[Path] = None
    train_gt: Optional[Path] = None
    train_lq: Optional[Path] = None
    test_gt: Optional[Path] = None
    test_lq: Optional[Path] = None
    crop: Optional[int] = None
    step: Optional[int] = None

    def describe(self) -> Dict[str, Any]:
        """Sources as recorded in results (absolute paths; the photos by name)."""
        train = ({'gt': str(self.train_gt), 'lq': str(self.train_lq)} if self.train_gt else
                 {'hr': str(self.train_hr)} if self.train_hr else {'photos': list(TRAIN_PHOTOS)})
        test = ({'gt': str(self.test_gt), 'lq': str(self.test_lq)} if self.test_gt else
                {'hr': str(self.test_hr)} if self.test_hr else {'photos': list(TEST_PHOTOS)})
        return {'train': train, 'test': test}


def _resolve(path: Optional[Path]) -> Optional[Path]:
    return None if path is None else Path(os.path.expanduser(str(path))).resolve()


def data_spec_from_args(args: argparse.Namespace) -> DataSpec:
    """Check the data options' combinations and that given folders exist and hold images."""
    spec = DataSpec(*(_resolve(getattr(args, key)) for key in
                      ('train_hr', 'test_hr', 'train_gt', 'train_lq', 'test_gt', 'test_lq')), args.crop, args.step)
    for kind in ('train', 'test'):
        hr, gt, lq = (getattr(spec, f'{kind}_{part}') for part in ('hr', 'gt', 'lq'))
        if hr and (gt or lq):
            raise HarnessError(f'--{kind}-hr and --{kind}-gt/--{kind}-lq exclude each other')
        if bool(gt) != bool(lq):
            raise HarnessError(f'--{kind}-gt and --{kind}-lq go together')
        if hr:
            try:
                list_images([hr])
            except PrepareError as error:
                raise HarnessError(f'--{kind}-hr: {error}') from None
        for option, path in ((f'--{kind}-gt', gt), (f'--{kind}-lq', lq)):
            if path and not path.exists():
                raise HarnessError(f'{option} {path} does not exist')
            if path and kind == 'test' and not path.is_dir():
                raise HarnessError(f'{option} {path} must be a folder of images (held-out images are read from disk)')
    return spec


def data_paths(spec: DataSpec, out: Path, scale: int) -> Dict[str, Path]:
    """The train/test GT and LQ folders the runs read (under ``out/data`` unless given as GT/LQ folders)."""
    root = out / 'data' / f'x{scale}'
    return {
        'train_gt': spec.train_gt or root / 'train' / 'train_HR_sub',
        'train_lq': spec.train_lq or root / 'train' / f'train_LR_bicubic_X{scale}_sub',
        'test_gt': spec.test_gt or root / 'test' / f'GTmod{scale}',
        'test_lq': spec.test_lq or root / 'test' / f'LRbicx{scale}',
    }


def sub_image_grid(spec: DataSpec, scale: int) -> Tuple[int, int]:
    """(crop, step) of the training sub-images: given, or the demo's for the photos, lksmn-prepare's for folders,
    rounded down to multiples of the scale."""
    crop, step = PHOTO_GRID if spec.train_hr is None else FOLDER_GRID
    crop, step = spec.crop or crop // scale * scale, spec.step or step // scale * scale
    if crop < LR_PATCH * scale:
        raise HarnessError(f'--crop {crop} is smaller than the training patch ({LR_PATCH * scale} HR pixels at x{scale})')
    return crop, step


def prepare_data(spec: DataSpec, out: Path, scale: int, workers: int) -> Dict[str, Path]:
    """Write the photos (default) and make the x``scale`` training sub-images and held-out GT/LR pairs.

    Prepared data is reused: ``out/data/x<s>/prepared.json`` records the sources and grid once preparation has
    finished; a folder prepared from other sources is refused.
    """
    paths = data_paths(spec, out, scale)
    root = out / 'data' / f'x{scale}'
    need_train, need_test = spec.train_gt is None, spec.test_gt is None
    if not (need_train or need_test):
        return paths
    record = {'sources': spec.describe(), 'grid': list(sub_image_grid(spec, scale)) if need_train else None}
    marker = root / 'prepared.json'
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous == record:
            return paths
        raise HarnessError(f'{root} was prepared from other data ({json.dumps(previous["sources"])}, grid '
                           f'{previous["grid"]}); use another --out for this data')
    photos = out / 'data' / 'photos'
    if need_train:
        train_hr = spec.train_hr or photos / 'train_HR'
        if spec.train_hr is None:
            write_photos(train_hr, TRAIN_PHOTOS)
        crop, step = sub_image_grid(spec, scale)
        prepare_div2k([train_hr], root / 'train', 'train', SubImageSettings(scales=(scale,), crop=crop, step=step),
                      workers=workers, lmdb=False)
    if need_test:
        test_hr = spec.test_hr or photos / 'test_HR'
        if spec.test_hr is None:
            write_photos(test_hr, TEST_PHOTOS)
        prepare_benchmark(test_hr, root / 'test', scales=(scale,), workers=workers)
    text = json.dumps(record, indent=1) + '\n'
    replace_atomically(marker, lambda temp: temp.write_text(text), durable=False)
    return paths


def check_data(paths: Dict[str, Path], scale: int) -> None:
    """GT/LQ pairing, sizes (GT = scale x LQ) and image counts, as BasicSR will read them; HarnessError if not."""
    backend = 'lmdb' if str(paths['train_gt']).endswith('.lmdb') else 'disk'
    for kind, io in (('train', backend), ('test', 'disk')):
        dataset = {'type': 'PairedImageDataset', 'dataroot_gt': str(paths[f'{kind}_gt']),
                   'dataroot_lq': str(paths[f'{kind}_lq']), 'io_backend': {'type': io}}
        try:
            check_dataset_options(dataset, scale, f'{kind} data')
        except DatasetError as error:
            raise HarnessError(str(error)) from None


# ----------------------------------------------------------------------------------------------------
# Options and runs


def _set(opt: Dict[str, Any], dotted: str, value: Any) -> None:
    """Set an existing key of the template (a missing one means the demo's template changed: fail loudly)."""
    *parents, last = dotted.split('.')
    node = opt
    for key in parents:
        node = node[key]
    if last not in node:
        raise KeyError(f'the demo option template has no key {dotted}')
    node[last] = value


def num_gpu(device: str) -> int:
    """BasicSR's ``num_gpu`` for ``--device``; 'cuda' without a GPU is a HarnessError."""
    if device == 'cuda' and not torch.cuda.is_available():
        raise HarnessError("--device cuda was asked for, but torch sees no CUDA GPU (use auto or cpu)")
    return 1 if device == 'cuda' or (device == 'auto' and torch.cuda.is_available()) else 0


def run_name(network: Network, scale: int, seed: int) -> str:
    """BasicSR experiment name and folder name of one run."""
    return f'{network.name}_x{scale}_s{seed}'


def run_options(network: Network, seed: int, scale: int, iters: int, batch: int, gpus: int,
                paths: Dict[str, Path], run_root: Path) -> Dict[str, Dict[str, Any]]:
    """Train and test option dicts of one run: the demo's template with this network, seed and scale."""
    template = demo_options({key: Path(value) for key, value in paths.items()}, run_root, iters, batch)
    name = run_name(network, scale, seed)
    for kind, opt in template.items():
        _set(opt, 'name', name)
        _set(opt, 'scale', scale)
        _set(opt, 'manual_seed', seed)
        _set(opt, 'num_gpu', gpus)
        _set(opt, 'network_g', network.options(scale))
        metrics = opt['val']['metrics']
        for metric in metrics.values():
            metric['crop_border'] = scale
    train, test = template['train'], template['test']
    _set(train, 'datasets.train.gt_size', LR_PATCH * scale)
    if str(paths['train_gt']).endswith('.lmdb'):
        _set(train, 'datasets.train.io_backend', {'type': 'lmdb'})
    _set(test, 'path.pretrain_network_g', str(final_checkpoint(run_root, name)))
    _set(test, 'val.pbar', False)
    return {'train': train, 'test': test}


def describe_recipe(train: Dict[str, Any]) -> str:
    """One line on the training recipe of a train option dict (optimizer, schedule, loss, EMA)."""
    t = train['train']
    optim, scheduler = t['optim_g'], t.get('scheduler') or {}
    schedule = (f'cosine decay to {scheduler.get("eta_min")}' if scheduler.get('type') == 'CosineAnnealingRestartLR'
                else scheduler.get('type', 'constant'))
    loss = (t.get('pixel_opt') or {}).get('type', '?')
    ema = f'EMA {t["ema_decay"]}' if t.get('ema_decay') else 'no EMA'
    return f'{optim["type"]} lr {optim["lr"]} (betas {optim.get("betas")}), {schedule}, {loss}, {ema}'


def demo_recipe() -> str:
    """``describe_recipe`` of the demo's template (for --help)."""
    paths = {key: Path('.') for key in ('train_gt', 'train_lq', 'test_gt', 'test_lq')}
    return describe_recipe(demo_options(paths, Path('.'), 2000, 8)['train'])


def final_checkpoint(run_root: Path, name: str) -> Path:
    """``<run>/experiments/<name>/models/net_g_latest.pth``, written by BasicSR at the end of training."""
    return run_root / 'experiments' / name / 'models' / FINAL_CHECKPOINT


def portable(value: Any, out: Path) -> Any:
    """``value`` with paths under ``out`` written as ``$OUT/...``, to compare runs across moves of ``out``."""
    if isinstance(value, dict):
        return {key: portable(item, out) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item, out) for item in value]
    if isinstance(value, str) and (value == str(out) or value.startswith(str(out) + os.sep)):
        return '$OUT' + value[len(str(out)):]
    return value


def differences(old: Any, new: Any, where: str = '') -> List[str]:
    """Every setting that differs, as 'key was OLD, now NEW' (nested keys dotted)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in list(old) + [k for k in new if k not in old]:
            if old.get(key) != new.get(key):
                found += differences(old.get(key), new.get(key), f'{where}.{key}' if where else str(key))
        return found
    return [f'{where or "options"} was {json.dumps(old)}, now {json.dumps(new)}']


@dataclass
class Run:
    """One (network, seed) training run and where its files live."""

    network: Network
    seed: int
    name: str
    root: Path
    options: Dict[str, Dict[str, Any]]
    key: Dict[str, Any]

    @property
    def checkpoint(self) -> Path:
        return final_checkpoint(self.root, self.name)

    @property
    def score_path(self) -> Path:
        return self.root / SCORE_FILE

    def recorded_key(self) -> Optional[Dict[str, Any]]:
        """The settings this run folder was trained with, if it records them."""
        try:
            return json.loads((self.root / RUN_FILE).read_text())['key']
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def state(self) -> str:
        """'finished' (checkpoint and score), 'trained' (checkpoint only), 'new', or 'conflict' (other settings)."""
        recorded = self.recorded_key()
        has_checkpoint = self.checkpoint.is_file()
        if recorded is None:
            return 'new'
        if recorded != self.key:
            return 'conflict' if has_checkpoint else 'new'
        if has_checkpoint and self.score_path.is_file():
            return 'finished'
        return 'trained' if has_checkpoint else 'new'


def plan_runs(networks: Sequence[Network], seeds: Sequence[int], scale: int, iters: int, batch: int, gpus: int,
              paths: Dict[str, Path], out: Path) -> List[Run]:
    """Every (network, seed) run, network by network; HarnessError when a run folder holds other settings."""
    runs = []
    for network in networks:
        for seed in seeds:
            name = run_name(network, scale, seed)
            root = out / 'runs' / name
            options = run_options(network, seed, scale, iters, batch, gpus, paths, root)
            key = portable({k: v for k, v in options['train'].items() if k != 'num_gpu'}, out)
            run = Run(network, seed, name, root, options, key)
            if run.state() == 'conflict':
                changed = '; '.join(differences(run.recorded_key(), key)[:3])
                raise HarnessError(f'{root} was trained with other settings ({changed}); use another --out, or '
                                   f'delete that folder to retrain it')
            runs.append(run)
    return runs


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1) + '\n'
    replace_atomically(path, lambda temp: temp.write_text(text), durable=False)


def _write_yaml(path: Path, opt: Dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def reset_basicsr_logger() -> None:
    """Close BasicSR's 'basicsr' logger so that the next pipeline call makes one for its own log file.

    BasicSR sets it up once per process (``basicsr.utils.logger.initialized_logger``); without this every run
    after the first would log into the first run's file.
    """
    from basicsr.utils import logger as basicsr_logger
    log = logging.getLogger('basicsr')
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    basicsr_logger.initialized_logger.pop('basicsr', None)


@contextlib.contextmanager
def captured_output(log_path: Optional[Path]) -> Iterator[None]:
    """Send BasicSR's console output (its logger, prints, progress bars, warnings) to ``log_path``."""
    reset_basicsr_logger()
    try:
        if log_path is None:
            yield
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, 'a') as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            yield
    finally:
        reset_basicsr_logger()


def _metrics(image: np.ndarray, gt: np.ndarray, scale: int) -> Dict[str, float]:
    return {'psnr': float(calculate_psnr(image, gt, scale, input_order='HWC', test_y_channel=True)),
            'ssim': float(calculate_ssim(image, gt, scale, input_order='HWC', test_y_channel=True))}


def _test_pairs(paths: Dict[str, Path]) -> List[Tuple[Path, Path]]:
    """(GT, LQ) files of the held-out set: every non-hidden file of the GT folder, LQ of the same name."""
    gts = sorted(p for p in paths['test_gt'].iterdir() if p.is_file() and not p.name.startswith('.'))
    return [(gt, paths['test_lq'] / gt.name) for gt in gts]


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise HarnessError(f'cannot read image {path}')
    return image


def bicubic_scores(paths: Dict[str, Path], scale: int) -> Dict[str, Dict[str, float]]:
    """{image: PSNR/SSIM of MATLAB bicubic} on the held-out pairs."""
    return {gt.stem: _metrics(bicubic_upscale(_read(lq), scale), _read(gt), scale) for gt, lq in _test_pairs(paths)}


def score_run(run: Run, paths: Dict[str, Path], scale: int, bicubic: Dict[str, Dict[str, float]]) -> Dict[str, Any]:
    """PSNR/SSIM of the run's saved test outputs (BasicSR's test pipeline) against the held-out GT."""
    dataset = run.options['test']['datasets']['test_1']['name']
    folder = run.root / 'results' / run.name / 'visualization' / dataset
    per_image = {}
    for gt, lq in _test_pairs(paths):
        sr_path = folder / f'{lq.stem}_{run.name}.png'
        if not sr_path.is_file():
            raise RuntimeError(f'the test pipeline did not write {sr_path}')
        per_image[gt.stem] = _metrics(_read(sr_path), _read(gt), scale)
    mean = {m: float(np.mean([v[m] for v in per_image.values()])) for m in ('psnr', 'ssim')}
    bicubic_mean = {m: float(np.mean([bicubic[k][m] for k in per_image])) for m in ('psnr', 'ssim')}
    return {'run': run.name, 'network': run.network.name, 'seed': run.seed, 'per_image': per_image, **mean,
            'psnr_gain': mean['psnr'] - bicubic_mean['psnr'], 'ssim_gain': mean['ssim'] - bicubic_mean['ssim'],
            'bicubic': bicubic_mean}


def train_and_score(run: Run, paths: Dict[str, Path], scale: int, bicubic: Dict[str, Dict[str, float]],
                    verbose: bool, device: str) -> Dict[str, Any]:
    """Train (unless the final checkpoint is there), test and score one run; writes its score file atomically."""
    log = None if verbose else run.root / 'console.log'
    record: Dict[str, Any] = {}
    if run.state() != 'trained':
        if run.root.exists():
            shutil.rmtree(run.root)  # an unfinished run starts over, so that every run is one uninterrupted training
        run.root.mkdir(parents=True)
        _write_json(run.root / RUN_FILE, {'key': run.key, 'network': run.network.name, 'seed': run.seed})
        train_yml = _write_yaml(run.root / 'options' / 'train.yml', run.options['train'])
        start = time.time()
        with captured_output(log):
            run_training(['-opt', str(train_yml)], root_path=str(run.root))
        record['train_seconds'] = time.time() - start
        _write_json(run.root / 'train_time.json', {'seconds': record['train_seconds'], 'device': device})
    else:
        try:
            record.update(train_seconds=json.loads((run.root / 'train_time.json').read_text())['seconds'])
        except (OSError, ValueError, KeyError):
            pass
    test_yml = _write_yaml(run.root / 'options' / 'test.yml', run.options['test'])
    shutil.rmtree(run.root / 'results', ignore_errors=True)  # an interrupted test's output (BasicSR would archive it)
    with captured_output(log):
        run_testing(['-opt', str(test_yml)], root_path=str(run.root))
    score = {**score_run(run, paths, scale, bicubic), **record, 'device': device}
    _write_json(run.score_path, score)
    return score


# ----------------------------------------------------------------------------------------------------
# Timing (after all training)


def load_trained(network: Network, scale: int, checkpoint: Optional[Path]) -> nn.Module:
    """The network on the CPU in fp32 and eval mode, with trained weights when ``checkpoint`` is given."""
    model = build_network(network, scale)
    if checkpoint is not None:
        model.load_state_dict(load_state_dict(checkpoint))
    return model.float().cpu().eval()


PEER_TIMING_PATHS = ('channels_last', 'compile', 'compile_channels_last', 'openvino')
LKSMN_TIMING_PATHS = ('channels_last', 'onnxruntime', 'openvino')


def timing_paths(networks: Sequence[Network]) -> Dict[str, Tuple[str, ...]]:
    """The paths each network is timed on, the candidates for its fastest one (benchmarks/speed.py times them
    all): peers on PyTorch (channels_last, torch.compile) and OpenVINO; LKSMN networks on channels_last, ONNX
    Runtime and OpenVINO (lksmn-upscale's backends; torch.compile never beat ONNX Runtime for LKSMN in
    speed.py). A runtime that is not installed is left out. Peers are not run on ONNX Runtime: SAFMN's export
    fails at 180x320 (adaptive pooling) and SPAN's crashes ONNX Runtime 1.31."""
    installed = {runtime: runtime_installed(runtime) for runtime in RUNTIME_MODULES}
    return {n.name: tuple(p for p in (LKSMN_TIMING_PATHS if n.arch == 'LKSMN' else PEER_TIMING_PATHS)
                          if installed.get(p, True))
            for n in networks}


def time_networks(networks: Sequence[Network], checkpoints: Dict[str, Optional[Path]], scale: int,
                  threads: Optional[int], rounds: int = 5) -> Dict[str, Dict[str, Any]]:
    """CPU fp32 latency of each network's fastest path, all interleaved in one process (``fastest_latency``)."""
    from lksmn_arch.inference.latency import fastest_latency
    gc.collect()
    models = {n.name: load_trained(n, scale, checkpoints.get(n.name)) for n in networks}
    height, width = lr_size_for_output(scale)
    shape = (1, 3, height, width)
    measured = fastest_latency(models, input_shape=shape, threads=threads, paths=timing_paths(networks),
                               rounds=rounds)
    when = time.strftime('%Y-%m-%d %H:%M:%S')
    used_threads = threads or torch.get_num_threads()
    return {name: {'path': path, 'seconds': float(seconds), 'input_shape': list(shape), 'threads': used_threads,
                   'torch': torch.__version__, 'measured': when,
                   'network_g': next(n for n in networks if n.name == name).options(scale)}
            for name, (path, seconds) in measured.items() if seconds is not None}


def earlier_timings(out: Path, networks: Sequence[Network], scale: int) -> Dict[str, Dict[str, Any]]:
    """Timings in ``out/timing.json`` whose network options are the same as now (used with --no-timing)."""
    try:
        recorded = json.loads((out / TIMING_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {n.name: dict(recorded[n.name], earlier=True) for n in networks
            if isinstance(recorded.get(n.name), dict) and recorded[n.name].get('network_g') == n.options(scale)}


# ----------------------------------------------------------------------------------------------------
# Results: JSON, Markdown table, picture


def summarise(values: Sequence[float]) -> Optional[Dict[str, float]]:
    """Mean, sample standard deviation (0 for one value), min and max; None when empty."""
    if not values:
        return None
    return {'mean': float(statistics.fmean(values)), 'std': float(statistics.stdev(values)) if len(values) > 1 else 0.0,
            'min': float(min(values)), 'max': float(max(values)), 'n': len(values)}


def collect_results(networks: Sequence[Network], complexity: Dict[str, Dict[str, int]],
                    scores: Dict[str, List[Dict[str, Any]]], failures: Dict[str, List[str]],
                    timings: Dict[str, Dict[str, Any]], bicubic: Dict[str, Dict[str, float]],
                    settings: Dict[str, Any]) -> Dict[str, Any]:
    """Everything the table and the picture show, as one JSON-ready dict."""
    rows = []
    for network in networks:
        runs = sorted(scores.get(network.name, []), key=lambda s: s['seed'])
        rows.append({
            'name': network.name, 'arch': network.arch, 'kwargs': network.kwargs,
            'network_g': network.options(settings['scale']),
            'resolved_kwargs': ({**lksmn_defaults(), **json.loads(json.dumps(network.kwargs))}
                                if network.arch == 'LKSMN' else None),
            **complexity[network.name],
            'latency': timings.get(network.name),
            'psnr_gain': summarise([s['psnr_gain'] for s in runs]),
            'ssim_gain': summarise([s['ssim_gain'] for s in runs]),
            'psnr': summarise([s['psnr'] for s in runs]),
            'ssim': summarise([s['ssim'] for s in runs]),
            'runs': [{key: s.get(key) for key in ('seed', 'psnr', 'ssim', 'psnr_gain', 'ssim_gain', 'per_image',
                                                   'train_seconds', 'device', 'run')} for s in runs],
            'failed': failures.get(network.name, []),
        })
    bicubic_mean = {m: float(np.mean([v[m] for v in bicubic.values()])) for m in ('psnr', 'ssim')}
    return {'settings': settings, 'bicubic': {**bicubic_mean, 'per_image': bicubic}, 'networks': rows}


def _fmt_gain(summary: Optional[Dict[str, float]], digits: int = 2) -> str:
    if summary is None:
        return 'n/a'
    text = f'{summary["mean"]:+.{digits}f}'
    return text + (f' ± {summary["std"]:.{digits}f}' if summary['n'] > 1 else '')


def _describe_data(source: Dict[str, Any], kind: str) -> str:
    if 'photos' in source:
        return f"scikit-image's bundled photos, the demo's {len(source['photos'])} {kind} photos"
    return ', '.join(f'{key.upper()} {value}' for key, value in source.items())


def format_table(results: Dict[str, Any]) -> str:
    """The Markdown report: settings, bicubic reference and one row per network."""
    s = results['settings']
    bicubic = results['bicubic']
    timing = next((r['latency'] for r in results['networks'] if r['latency']), None)
    lines = [
        f'# Equal-budget study, x{s["scale"]}',
        '',
        f'- Recipe: the demo\'s ({s["iters"]} iterations, batch {s["batch"]}, LR patches {LR_PATCH}x{LR_PATCH}, '
        f'{s["recipe_summary"]}); seeds {", ".join(map(str, s["seeds"]))}; trained on {s["device"]}.',
        f'- Training data: {_describe_data(s["data"]["train"], "training")}; held-out: '
        f'{", ".join(bicubic["per_image"])} ({_describe_data(s["data"]["test"], "held-out")}).',
        f'- Scores: PSNR (dB) / SSIM on Y, border {s["scale"]}, mean over the held-out images; **bicubic '
        f'(MATLAB): {bicubic["psnr"]:.2f} dB / {bicubic["ssim"]:.4f}**. Gains are over bicubic, mean ± sample '
        f'std over seeds; per-seed values in the last column.',
    ]
    if timing:
        shape = timing['input_shape']
        lines.append(f'- CPU latency: fp32, batch 1, {shape[3]}x{shape[2]} -> {shape[3] * s["scale"]}x'
                     f'{shape[2] * s["scale"]}, median, fastest path, all networks interleaved in one process, '
                     f'{timing["threads"]} threads, torch {timing["torch"]}, measured after all training.')
        if any(r['latency'] and r['latency'].get('earlier') for r in results['networks']):
            lines.append('- Latencies marked * were measured by an earlier invocation (this one ran --no-timing).')
    else:
        lines.append('- CPU latency: not measured (--no-timing).')
    lines += ['', '| network | configuration | params | Multi-Adds (G, 720p) | CPU latency (ms) | fastest path | '
              'PSNR gain (dB) | SSIM gain | PSNR / SSIM | per-seed PSNR gain (dB) |',
              '|---|---|---:|---:|---:|---|---:|---:|---:|---|']
    for row in results['networks']:
        latency = row['latency']
        ms = 'n/a' if not latency else f'{latency["seconds"] * 1000:.0f}' + ('*' if latency.get('earlier') else '')
        path = latency['path'] if latency else ''
        config = json.dumps(row['kwargs']) if row['kwargs'] else ('defaults' if row['arch'] == 'LKSMN' else '')
        if row['arch'] != 'LKSMN':
            config = f'{row["arch"]} {config}'.strip()
        absolute = ('n/a' if row['psnr'] is None else f'{row["psnr"]["mean"]:.2f} / {row["ssim"]["mean"]:.4f}')
        per_seed = ', '.join(f's{r["seed"]}: {r["psnr_gain"]:+.2f}' for r in row['runs'])
        if row['failed']:
            per_seed += (', ' if per_seed else '') + 'failed: ' + ', '.join(row['failed'])
        lines.append(f'| {row["name"]} | {config.replace("|", "/")} | {row["params"]:,} | '
                     f'{row["multi_adds"] / 1e9:.2f} | {ms} | {path} | {_fmt_gain(row["psnr_gain"])} | '
                     f'{_fmt_gain(row["ssim_gain"], 4)} | {absolute} | {per_seed} |')
    lines.append(f'| bicubic | MATLAB imresize | 0 | - | - | - | 0 | 0 | {bicubic["psnr"]:.2f} / '
                 f'{bicubic["ssim"]:.4f} | |')
    return '\n'.join(lines) + '\n'


def plot_gain_vs_latency(results: Dict[str, Any], path: Path) -> None:
    """Held-out PSNR gain against CPU latency, one labelled point per network, marker area ~ parameters.

    Error bars span the seeds (min to max). Without any latency (--no-timing and none measured earlier) the
    x axis is Multi-Adds instead, and the title says so.
    """
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    rows = [r for r in results['networks'] if r['psnr_gain'] is not None]
    timed = [r for r in rows if r['latency']]
    by_latency = bool(timed)
    points = timed if by_latency else rows
    s = results['settings']
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    largest = max([r['params'] for r in points] + [1])
    for row in points:
        x = row['latency']['seconds'] * 1000 if by_latency else row['multi_adds'] / 1e9
        gain = row['psnr_gain']
        color = 'tab:blue' if row['arch'] == 'LKSMN' else 'tab:orange'
        ax.scatter([x], [gain['mean']], s=600 * row['params'] / largest, alpha=0.55, color=color, edgecolors='black',
                   linewidths=0.6, zorder=3)
        if gain['n'] > 1:
            ax.errorbar([x], [gain['mean']], yerr=[[gain['mean'] - gain['min']], [gain['max'] - gain['mean']]],
                        fmt='none', ecolor='black', elinewidth=0.8, capsize=3, zorder=2)
        ax.annotate(f'{row["name"]} ({row["params"] / 1e3:.0f}K)', (x, gain['mean']), textcoords='offset points',
                    xytext=(7, 6), fontsize=8)
    if by_latency:
        ax.set_xlabel('CPU latency (ms), fp32, fastest path, ' + 'x'.join(map(str, points[0]['latency']['input_shape'][:1:-1]))
                      + ' input')
    else:
        ax.set_xlabel('Multi-Adds (G) for a 720p output (latency not measured)')
    ax.set_ylabel(f'held-out PSNR gain over bicubic (dB), x{s["scale"]}')
    ax.axhline(0.0, color='gray', linewidth=0.8, linestyle='--', zorder=1)
    for label, color in (('LKSMN variants', 'tab:blue'), ('peers', 'tab:orange')):
        ax.scatter([], [], s=60, color=color, alpha=0.55, edgecolors='black', linewidths=0.6, label=label)
    ax.legend(loc='best', fontsize=8, title='error bars: seed min-max; dashed: bicubic', title_fontsize=7)
    untimed = [r['name'] for r in rows if not r['latency']] if by_latency else []
    title = (f'Equal budget: {s["iters"]} iterations, batch {s["batch"]}, seeds {",".join(map(str, s["seeds"]))}; '
             f'marker area ~ parameters')
    if untimed:
        title += f'\nnot timed: {", ".join(untimed)}'
    if not points:
        ax.text(0.5, 0.5, 'no finished runs to plot', ha='center', va='center', transform=ax.transAxes)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.2)
    fig.tight_layout()
    replace_atomically(path, lambda temp: fig.savefig(temp, format='png'), durable=False)
    plt.close(fig)


def write_outputs(results: Dict[str, Any], out: Path) -> Dict[str, Path]:
    """results.json, table.md and gain_vs_latency.png in ``out``, each written atomically."""
    paths = {'json': out / 'results.json', 'table': out / 'table.md', 'figure': out / 'gain_vs_latency.png'}
    _write_json(paths['json'], results)
    table = format_table(results)
    replace_atomically(paths['table'], lambda temp: temp.write_text(table), durable=False)
    plot_gain_vs_latency(results, paths['figure'])
    return paths


# ----------------------------------------------------------------------------------------------------
# Command line

def _wrap(text: str, indent: int, width: int = 110) -> str:
    import textwrap
    return ('\n' + ' ' * indent).join(textwrap.wrap(text, width - indent))


_DESCRIPTION = """\
Equal-budget study: train a list of networks with ONE recipe (the embedded demo's option template: same
data, iterations, batch, optimizer and seeds) through BasicSR's own train pipeline, score each on held-out
images next to MATLAB bicubic, then time each on the CPU, and write a table and a picture."""

_EPILOG = f"""\
networks (--nets):
  NAME                      a built-in entry (--list shows them with parameters and Multi-Adds):
                            {_wrap(', '.join(NETWORKS), 28)}
  NAME=LKSMN:{{json}}         LKSMN with these keyword arguments, e.g. 'nomdta2=LKSMN:{{"mdta": false}}'
  NAME=ENTRY:{{json}}         a built-in entry with some keyword arguments changed, e.g.
                            'safmn48=safmn:{{"dim": 48}}'
  upscale comes from --scale. Every network is built (meta device, one meta forward) before any training:
  an unknown name, keyword or invalid value stops the study with a one-line error (exit status 2).
  Peers (safmn, span) are spandrel's classes registered in BasicSR as SpandrelSAFMN / SpandrelSPAN
  (needs the bench extra: pip install -c constraints-cpu.txt -e ".[bench]").

recipe (the demo's option template, lksmn_arch.training.demo.demo_options, for every network):
  {_wrap(demo_recipe(), 2)},
  schedule over --iters, LR patches {LR_PATCH}x{LR_PATCH} (HR {LR_PATCH}*scale), flips and rotations, model LKSMNModel
  (BasicSR's SRModel with safe checkpoints), BasicSR's manual_seed = the run's seed.

data:
  default      scikit-image's bundled photos exactly as the demo uses them: train on its {len(TRAIN_PHOTOS)}
               training photos ({', '.join(TRAIN_PHOTOS[:3])}, ...), score on its held-out
               {', '.join(TEST_PHOTOS)}; no download.
  --train-hr   your HR training images: MATLAB-bicubic LR and {FOLDER_GRID[0]}x{FOLDER_GRID[0]} sub-images every
               {FOLDER_GRID[1]} px are made with lksmn-prepare's functions (photos: {PHOTO_GRID[0]}/{PHOTO_GRID[1]},
               as the demo; --crop/--step change it).
  --test-hr    your HR held-out images (e.g. Set14/HR): GTmod<s>/ and LRbicx<s>/ are made from them.
  --train-gt/--train-lq, --test-gt/--test-lq
               already paired GT and LQ folders (train: also LMDBs made by lksmn-prepare); LQ files must have
               the GT's names. Empty folders or GT/LQ that do not pair are refused before training (exit 2).
  Prepared data goes to OUT/data/x<scale>/ and is reused.

scores: PSNR and SSIM on the Y channel, border = scale (BasicSR's calculate_psnr/ssim), of the images BasicSR's
  test pipeline writes, and of MATLAB bicubic on the same images; per seed, and mean ± std (with min/max in
  results.json) of the gain over bicubic over the seeds.

timing: a separate phase after ALL training has finished (never while a run trains): every network, with the
  trained weights of its first seed, in fp32 on the CPU, through lksmn_arch.inference.latency.fastest_latency (its
  fastest inference path, median, all models interleaved in one process), for a 1280x720 output. Paths:
  peers channels_last, compile, compile_channels_last, OpenVINO; LKSMN networks channels_last, ONNX Runtime,
  OpenVINO (the runtimes when installed).
  --no-timing skips it; earlier timings in OUT/{TIMING_FILE} of networks with the same options are then shown,
  marked *. Parameters and Multi-Adds (1280x720 output, lksmn_arch.archs.complexity) are always reported.

outputs (in OUT):
  runs/<net>_x<s>_s<seed>/   one BasicSR run: options/, experiments/ (checkpoints, log), results/ (test
                             images, log), console.log (BasicSR's console output), {SCORE_FILE}
  results.json               settings, bicubic, and per network: parameters, Multi-Adds, latency, scores
  table.md                   the Markdown table
  gain_vs_latency.png        held-out PSNR gain against CPU latency; marker area ~ parameters
  {TIMING_FILE}                latest measured latencies; data/ the prepared data

resuming: run the same command again. A finished run (final checkpoint and {SCORE_FILE}) is reused, not
  retrained; a run with a final checkpoint but no score is only tested; an unfinished run starts over from
  iteration 0 (so every run is one uninterrupted training, comparable across seeds). A run folder trained with
  other settings (e.g. another --iters) is refused: use another --out. Networks added to --nets later are
  trained and join the table. Exit status: 0 done, 1 some run failed (the others were done), 2 bad input,
  130 interrupted.

ablation option files: --write-options DIR writes train_LKSMN_x4_<entry>.yml for every LKSMN entry (full DF2K
  training, from options/train_LKSMN_x4.yml) and exits; options/ablation/ holds them, generated this way."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--nets', nargs='+', default=list(DEFAULT_NETS), metavar='SPEC',
                        help=f'networks to train (default: {" ".join(DEFAULT_NETS)})')
    parser.add_argument('--out', type=Path, default=Path('equal_budget_results'),
                        help='results folder (default: equal_budget_results in the current directory)')
    parser.add_argument('--iters', type=int, default=2000, help='training iterations per run (default 2000)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1], help='seeds, one run each (default 0 1)')
    parser.add_argument('--scale', type=int, default=4, choices=SUPPORTED_SCALES, help='upscaling factor (default 4)')
    parser.add_argument('--batch', type=int, default=8, help='batch size (default 8)')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                        help='training device (default auto: one CUDA GPU if available); timing is always CPU')
    parser.add_argument('--threads', type=int, default=None,
                        help="CPU threads for timing (default: fastest_latency's default)")
    parser.add_argument('--no-timing', action='store_true', help='skip the CPU timing phase')
    parser.add_argument('--timing-rounds', type=int, default=5,
                        help='timed rounds of the timing phase (default 5; one network\'s figure varied by up to '
                             '20%% between two 5-round phases here: use 15 for latencies you compare closely)')
    for kind, what in (('train', 'training'), ('test', 'held-out')):
        parser.add_argument(f'--{kind}-hr', type=Path, metavar='DIR', help=f'folder of HR {what} images')
        parser.add_argument(f'--{kind}-gt', type=Path, metavar='DIR', help=f'{what} GT folder (with --{kind}-lq)')
        parser.add_argument(f'--{kind}-lq', type=Path, metavar='DIR', help=f'{what} LQ folder (with --{kind}-gt)')
    parser.add_argument('--crop', type=int, default=None,
                        help=f'training sub-image size in HR pixels (default {PHOTO_GRID[0]} for the photos, '
                        f'{FOLDER_GRID[0]} for --train-hr; a multiple of the scale)')
    parser.add_argument('--step', type=int, default=None, help=f'training sub-image step (default {PHOTO_GRID[1]} / '
                        f'{FOLDER_GRID[1]})')
    parser.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1),
                        help='processes for data preparation (default min(2, CPUs))')
    parser.add_argument('--verbose', action='store_true',
                        help="show BasicSR's console output (default: in each run's console.log)")
    parser.add_argument('--list', action='store_true', help='list the built-in networks and exit')
    parser.add_argument('--write-options', type=Path, metavar='DIR',
                        help='write the ablation option files (train_LKSMN_x4_<entry>.yml) into DIR and exit')
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.iters < 1 or args.batch < 1:
        raise HarnessError('--iters and --batch must be positive')
    if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        raise HarnessError(f'--seeds must be distinct non-negative integers, got {args.seeds}')
    if args.threads is not None and args.threads < 1:
        raise HarnessError('--threads must be positive')
    if args.timing_rounds < 1:
        raise HarnessError(f'--timing-rounds must be positive, got {args.timing_rounds}')
    if args.workers < 1:
        raise HarnessError('--workers must be positive')
    if args.out.exists() and not args.out.is_dir():
        raise HarnessError(f'--out {args.out} exists and is not a folder')


def _list_networks(scale: int) -> None:
    for name, entry in NETWORKS.items():
        network = parse_network(name)
        try:
            counts = check_network(network, scale)
            size = f'{counts["params"]:>9,} params {counts["multi_adds"] / 1e9:6.2f} G'
        except HarnessError as error:
            size = f'unavailable: {error}'
        default = '' if name in DEFAULT_NETS else '  (not in the default list)'
        print(f'{name:14s} {network.describe():56s} {size}  {entry.note}{default}')


def _fmt_seconds(seconds: float) -> str:
    return f'{seconds:.0f} s' if seconds < 120 else f'{seconds / 60:.1f} min'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the study; returns the exit status (see --help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.write_options is not None:
            for path in write_ablation_options(args.write_options):
                print(path)
            return 0
        if args.list:
            _list_networks(args.scale)
            return 0
        return _run_study(args, argv)
    except HarnessError as error:
        print(f'{PROG}: error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'\n{PROG}: interrupted; re-run the same command to continue (finished runs are reused)',
              file=sys.stderr)
        return 130


def _run_study(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _check_args(args)
    scale, out = args.scale, args.out.resolve()
    # 1. everything that can be wrong with the input, before any data is written or any training starts
    networks = parse_networks(args.nets)
    if importlib.util.find_spec('matplotlib') is None:
        raise HarnessError('matplotlib is needed for gain_vs_latency.png: pip install -c constraints-cpu.txt -e ".[bench]"')
    complexity = {n.name: check_network(n, scale) for n in networks}
    gpus = num_gpu(args.device)
    device = 'cuda' if gpus else 'cpu'
    spec = data_spec_from_args(args)
    if spec.train_gt is None:
        sub_image_grid(spec, scale)
    paths = data_paths(spec, out, scale)
    runs = plan_runs(networks, args.seeds, scale, args.iters, args.batch, gpus, paths, out)
    print(f'{PROG}: {len(networks)} networks x {len(args.seeds)} seeds = {len(runs)} runs, x{scale}, {args.iters} '
          f'iterations, batch {args.batch}, training on {device}; results in {out}', flush=True)
    for network in networks:
        counts = complexity[network.name]
        print(f'  {network.name:14s} {network.describe():56s} {counts["params"]:>9,} params '
              f'{counts["multi_adds"] / 1e9:6.2f} G Multi-Adds', flush=True)

    # 2. data
    out.mkdir(parents=True, exist_ok=True)
    try:
        paths = prepare_data(spec, out, scale, args.workers)
    except PrepareError as error:
        raise HarnessError(str(error).splitlines()[0]) from None
    check_data(paths, scale)
    bicubic = bicubic_scores(paths, scale)
    print(f'data: {paths["train_gt"]}; held-out {len(bicubic)} images, bicubic '
          f'{np.mean([b["psnr"] for b in bicubic.values()]):.2f} dB', flush=True)

    # 3. training and scoring, one run at a time
    scores: Dict[str, List[Dict[str, Any]]] = {}
    failures: Dict[str, List[str]] = {}
    trained_seconds: List[float] = []
    to_train = sum(run.state() in ('new',) for run in runs)
    current: Optional[Run] = None
    try:
        for index, run in enumerate(runs, 1):
            current = run
            label = f'[{index}/{len(runs)}] {run.network.name} seed {run.seed}:'
            state = run.state()
            if state == 'finished':
                score = json.loads(run.score_path.read_text())
                print(f'{label} reused (finished earlier): {_fmt_score(score)}', flush=True)
                scores.setdefault(run.network.name, []).append(score)
                continue
            left = ''
            if trained_seconds and state == 'new':
                remaining = to_train * statistics.fmean(trained_seconds)
                left = f' (about {_fmt_seconds(remaining)} of training left)'
            action = f'training {args.iters} iters' if state == 'new' else 'trained earlier, testing'
            print(f'{label} {action}{left} ...', end='\n' if args.verbose else ' ', flush=True)
            start = time.time()
            try:
                score = train_and_score(run, paths, scale, bicubic, args.verbose, device)
            except Exception as error:  # one run failing (NaNs, a peer that does not train) must not stop the study
                _log_failure(run, error)
                print(f'FAILED ({_one_line(error)}); details in {run.root / "console.log"}', flush=True)
                failures.setdefault(run.network.name, []).append(f's{run.seed}')
                if state == 'new':
                    to_train -= 1
                continue
            if state == 'new':
                to_train -= 1
                trained_seconds.append(time.time() - start)
            print(f'{"  -> " if args.verbose else ""}done in {_fmt_seconds(time.time() - start)}: {_fmt_score(score)}',
                  flush=True)
            scores.setdefault(run.network.name, []).append(score)
        current = None
    except (KeyboardInterrupt, SystemExit) as stop:
        status = stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 130
        where, then = '', ''
        if current is not None:
            where = f' during {current.name}'
            then = (f', {current.name} is only tested' if current.checkpoint.is_file()
                    else f', {current.name} starts over')
        print(f'\n{PROG}: interrupted{where}. Re-run the same command to continue: finished runs are reused{then}.',
              file=sys.stderr, flush=True)
        return status

    # 4. timing, after all training
    timing_failed = False
    if args.no_timing:
        timings = earlier_timings(out, networks, scale)
        print(f'timing: skipped (--no-timing); {len(timings)} earlier measurement(s) reused', flush=True)
    else:
        checkpoints = {}
        for network in networks:
            finished = [r.checkpoint for r in runs if r.network.name == network.name and r.checkpoint.is_file()]
            checkpoints[network.name] = finished[0] if finished else None
        print(f'timing: {len(networks)} networks on the CPU, fp32, interleaved (lksmn_arch.inference.latency) ...', flush=True)
        try:
            timings = time_networks(networks, checkpoints, scale, args.threads, args.timing_rounds)
        except Exception as error:  # the table is still written, without latencies
            print(f'{PROG}: timing failed ({_one_line(error)}); writing the table without it (--no-timing '
                  f'skips timing)', file=sys.stderr, flush=True)
            timings, timing_failed = {}, True
        try:
            recorded = json.loads((out / TIMING_FILE).read_text())
        except (OSError, ValueError):
            recorded = {}
        if timings:
            _write_json(out / TIMING_FILE, {**recorded, **timings})
        for name, timing in timings.items():
            print(f'  {name:14s} {timing["seconds"] * 1000:8.1f} ms  ({timing["path"]})', flush=True)

    # 5. outputs
    settings = {'scale': scale, 'iters': args.iters, 'batch': args.batch, 'seeds': list(args.seeds),
                'device': device, 'data': spec.describe(), 'nets': [n.name for n in networks],
                'recipe': _recipe(runs[0].options['train'], out) if runs else None,
                'recipe_summary': describe_recipe(runs[0].options['train']) if runs else '',
                'command': ' '.join([PROG] + [_quote(a) for a in argv])}
    results = collect_results(networks, complexity, scores, failures, timings, bicubic, settings)
    written = write_outputs(results, out)
    print()
    print(written['table'].read_text())
    print(f'wrote {written["table"]}, {written["json"]} and {written["figure"]}')
    if failures:
        print(f'{PROG}: {sum(len(v) for v in failures.values())} run(s) failed: '
              + ', '.join(f'{k} {",".join(v)}' for k, v in failures.items())
              + '; re-run the same command to retry them', file=sys.stderr)
        return 1
    return 1 if timing_failed else 0


def _recipe(train: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """The train options shared by every run (name, network, seed and device left out)."""
    return portable({k: v for k, v in train.items() if k not in ('name', 'network_g', 'manual_seed', 'num_gpu')}, out)


def _log_failure(run: Run, error: BaseException) -> None:
    """Append the traceback of a failed run to its console.log."""
    import traceback
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        with open(run.root / 'console.log', 'a') as handle:
            handle.write('\n' + ''.join(traceback.format_exception(type(error), error, error.__traceback__)))
    except OSError:
        pass


def _quote(arg: str) -> str:
    return arg if re.match(r'^[A-Za-z0-9_./=:+-]+$', arg) else "'" + arg.replace("'", "'\\''") + "'"


def _fmt_score(score: Dict[str, Any]) -> str:
    return (f'PSNR {score["psnr"]:.2f} dB ({score["psnr_gain"]:+.2f} over bicubic), SSIM {score["ssim"]:.4f} '
            f'({score["ssim_gain"]:+.4f})')


if __name__ == '__main__':
    sys.exit(main())
