"""Shared test helpers: tiny paired datasets made from a real photo, and option files for them."""
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
import pytest
import yaml

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
from basicsr.utils.matlab_functions import imresize

REPO = Path(__file__).resolve().parents[1]
TINY_NETWORK = {'type': 'LKSMN', 'upscale': 2, 'num_feat': 12, 'num_block': 1, 'lkcd_kernels': [[9, 2], [21, 3]],
                'num_heads': 2}


def photo_crops(count: int, size: int, seed: int = 0) -> List[np.ndarray]:
    """``count`` BGR uint8 crops of ``size`` x ``size`` from scikit-image's astronaut photo."""
    from skimage import data
    image = np.ascontiguousarray(data.astronaut()[..., ::-1])
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        y, x = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
        crops.append(image[y:y + size, x:x + size].copy())
    return crops


def write_pairs(root: Path, crops: List[np.ndarray], scale: int) -> Dict[str, Path]:
    """GT and bicubic LQ folders of the same file names."""
    gt_dir, lq_dir = root / 'gt', root / 'lq'
    gt_dir.mkdir(parents=True)
    lq_dir.mkdir(parents=True)
    for index, crop in enumerate(crops):
        lq = np.clip(np.round(imresize(crop.astype(np.float64) / 255.0, 1 / scale) * 255), 0, 255).astype(np.uint8)
        cv2.imwrite(str(gt_dir / f'{index:03d}.png'), crop)
        cv2.imwrite(str(lq_dir / f'{index:03d}.png'), lq)
    return {'gt': gt_dir, 'lq': lq_dir}


def paired_dataset_options(name: str, gt: Path, lq: Path, phase: str, backend: str = 'disk') -> dict:
    opt = {'name': name, 'type': 'PairedImageDataset', 'dataroot_gt': str(gt), 'dataroot_lq': str(lq),
           'io_backend': {'type': backend}}
    if phase == 'train':
        opt.update(gt_size=16, use_hflip=True, use_rot=True, num_worker_per_gpu=0, batch_size_per_gpu=2,
                   dataset_enlarge_ratio=1, prefetch_mode=None)
    return opt


def training_options(name: str, train: dict, val: Optional[dict], total_iter: int = 4, save_every: int = 2,
                     ema_decay: float = 0) -> dict:
    opt = {
        'name': name, 'model_type': 'LKSMNModel', 'scale': 2, 'num_gpu': 'auto', 'manual_seed': 0,
        'datasets': {'train': train}, 'network_g': dict(TINY_NETWORK),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': ema_decay, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                  'total_iter': total_iter, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': save_every, 'use_tb_logger': False},
    }
    if val is not None:
        opt['datasets']['val'] = val
        opt['val'] = {'val_freq': save_every, 'save_img': False,
                      'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': True}}}
    return opt


def write_yaml(path: Path, opt: dict) -> Path:
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def run_module(module: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a user would, from ``cwd``."""
    return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='session', autouse=True)
def onnx_cache_in_a_temporary_folder(tmp_path_factory):
    """lksmn-upscale's ONNX cache (``--backend auto``) goes to a folder of this test session, never ~/.cache;
    set in os.environ, so that subprocesses inherit it."""
    import os
    previous = os.environ.get('LKSMN_CACHE_DIR')
    os.environ['LKSMN_CACHE_DIR'] = str(tmp_path_factory.mktemp('lksmn_cache'))
    yield
    if previous is None:
        os.environ.pop('LKSMN_CACHE_DIR', None)
    else:
        os.environ['LKSMN_CACHE_DIR'] = previous


@pytest.fixture(scope='session')
def tiny_pairs(tmp_path_factory) -> Dict[str, Path]:
    """6 training pairs and 2 validation pairs (x2) of 32x32 GT crops of a real photo."""
    root = tmp_path_factory.mktemp('tiny_pairs')
    crops = photo_crops(8, 32)
    train = write_pairs(root / 'train', crops[:6], scale=2)
    val = write_pairs(root / 'val', crops[6:], scale=2)
    return {'train_gt': train['gt'], 'train_lq': train['lq'], 'val_gt': val['gt'], 'val_lq': val['lq'], 'root': root}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for torchrun's --master_port)."""
    import socket
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]
