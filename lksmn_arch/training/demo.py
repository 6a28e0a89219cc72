"""The embedded demo: train LKSMN x4 on real photos that scikit-image ships, then test it against bicubic.

Everything runs through the project's own commands and BasicSR's pipelines: ``prepare_div2k`` and
``prepare_benchmark`` make the data (MATLAB bicubic LR, sub-images), ``run_training`` trains from a
written option file, ``run_testing`` upscales the held-out photos, and BasicSR's PSNR/SSIM (Y channel,
border = scale) score LKSMN and bicubic on the same images. No download is needed.

    lksmn-demo                      # or: python -m lksmn_arch.cli.demo --help
"""
import time
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
import yaml

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
from basicsr.metrics import calculate_psnr, calculate_ssim

from lksmn_arch.errors import TrainingError
from lksmn_arch.training.pipeline import OptionsError, run_testing, run_training
from lksmn_arch.utils.checkpoint import CheckpointError
from lksmn_arch.data.prepare import SubImageSettings, bicubic_upscale, prepare_benchmark, prepare_div2k
from lksmn_arch.data.sample_photos import TEST_PHOTOS, TRAIN_PHOTOS, write_photos

SCALE = 4
NAME = 'LKSMN_x4_demo'
MARKER = '.lksmn-demo'  # marks a folder the demo made, which a re-run may replace
DEMO_FAILURES = (OptionsError, TrainingError, CheckpointError, OSError)  # one line each from lksmn-demo


class DemoOutputError(ValueError):
    """``--out`` cannot be used as the demo's output folder; the message says why."""


def check_output_folder(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` must be emptied before the demo writes there (a previous demo output, or ``overwrite``);
    ``DemoOutputError`` if it cannot be used: it or a folder above it is a file, or it holds files the demo did
    not make and ``overwrite`` is not given."""
    out = Path(out)
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            what = 'is a file' if folder == out else f'cannot be made: {folder} is a file'
            raise DemoOutputError(f'--out {out} {what}, not a folder; pass --out a new or empty folder')
        if folder.exists():
            break
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not overwrite and not (out / MARKER).is_file():
        raise DemoOutputError(f'{out} is not empty; pass --overwrite to replace it or --out elsewhere')
    return True


def make_demo_data(data_root: Path) -> Dict[str, Path]:
    """HR photos, x4 bicubic training sub-images and held-out GT/LR pairs under ``data_root``."""
    write_photos(data_root / 'train_HR', TRAIN_PHOTOS)
    write_photos(data_root / 'test_HR', TEST_PHOTOS)
    settings = SubImageSettings(scales=(SCALE,), crop=128, step=64)
    train = prepare_div2k([data_root / 'train_HR'], data_root, 'demo_train', settings, workers=2, lmdb=False)
    prepare_benchmark(data_root / 'test_HR', data_root / 'test', scales=(SCALE,), workers=2)
    return {'train_gt': train.folders[0], 'train_lq': train.folders[1],
            'test_gt': data_root / 'test' / f'GTmod{SCALE}', 'test_lq': data_root / 'test' / f'LRbicx{SCALE}'}


def _metrics_options() -> dict:
    return {name: {'type': f'calculate_{name}', 'crop_border': SCALE, 'test_y_channel': True}
            for name in ('psnr', 'ssim')}


def demo_options(data: Dict[str, Path], root: Path, iterations: int, batch_size: int) -> Dict[str, dict]:
    """The training and test option files the demo runs (BasicSR format); paths are absolute."""
    network = {'type': 'LKSMN', 'upscale': SCALE}
    test_set = {'name': 'heldout', 'type': 'PairedImageDataset', 'dataroot_gt': str(data['test_gt']),
                'dataroot_lq': str(data['test_lq']), 'io_backend': {'type': 'disk'}}
    train = {
        'name': NAME, 'model_type': 'LKSMNModel', 'scale': SCALE, 'num_gpu': 'auto', 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'sample_photos', 'type': 'PairedImageDataset', 'dataroot_gt': str(data['train_gt']),
                      'dataroot_lq': str(data['train_lq']), 'io_backend': {'type': 'disk'}, 'gt_size': 64,
                      'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': batch_size,
                      'dataset_enlarge_ratio': 100, 'prefetch_mode': None},
            'val': dict(test_set),
        },
        'network_g': network,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        # A short run: no EMA (at 0.999 the EMA weights would lag ~1000 iterations, longer than the demo),
        # a higher learning rate than full training, cosine decay to the end.
        'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 2e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [iterations], 'restart_weights': [1],
                                'eta_min': 1e-5},
                  'total_iter': iterations, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 10 * iterations, 'save_img': False, 'metrics': _metrics_options()},
        'logger': {'print_freq': 100, 'save_checkpoint_freq': iterations, 'use_tb_logger': False},
    }
    test = {
        'name': NAME, 'model_type': 'LKSMNModel', 'scale': SCALE, 'num_gpu': 'auto', 'manual_seed': 0,
        'datasets': {'test_1': test_set}, 'network_g': network,
        'path': {'pretrain_network_g': str(root / 'experiments' / NAME / 'models' / 'net_g_latest.pth'),
                 'param_key_g': 'params',
                 'strict_load_g': True},
        'val': {'save_img': True, 'suffix': None, 'pbar': True, 'metrics': _metrics_options()},
    }
    return {'train': train, 'test': test}


def _score(image: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    return {'psnr': calculate_psnr(image, gt, SCALE, input_order='HWC', test_y_channel=True),
            'ssim': calculate_ssim(image, gt, SCALE, input_order='HWC', test_y_channel=True)}


def shipped_upscaler() -> Optional[object]:
    """An Upscaler (PyTorch, whole image) for the model shipped for x4, or None when the package ships none."""
    from lksmn_arch.inference.upscaler import Upscaler
    from lksmn_arch.weights.shipped import shipped_models
    if not any(m.scale == SCALE for m in shipped_models()):
        return None
    return Upscaler.from_checkpoint(scale=SCALE, device='cpu', progress=False)


def upscale_bgr(upscaler, lr: np.ndarray) -> np.ndarray:
    """A uint8 BGR image through an Upscaler (which takes RGB floats), rounded to uint8 as BasicSR does."""
    rgb = upscaler.upscale_image(lr[..., ::-1].astype(np.float32) / 255.0)
    return np.ascontiguousarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)[..., ::-1])


def score_results(data: Dict[str, Path], results: Path, shipped=None) -> List[dict]:
    """PSNR/SSIM (Y) of bicubic, of LKSMN's saved outputs and (given its Upscaler) of the shipped model, per image."""
    rows = []
    for gt_path in sorted(data['test_gt'].glob('*.png')):
        gt = cv2.imread(str(gt_path))
        lr = cv2.imread(str(data['test_lq'] / gt_path.name))
        sr_path = results / 'visualization' / 'heldout' / f'{gt_path.stem}_{NAME}.png'
        sr = cv2.imread(str(sr_path))
        if sr is None:
            raise RuntimeError(f'the test pipeline did not write {sr_path}')
        row = {'image': gt_path.stem, 'bicubic': _score(bicubic_upscale(lr, SCALE), gt), 'lksmn': _score(sr, gt),
               'gt': gt, 'bicubic_img': bicubic_upscale(lr, SCALE), 'lksmn_img': sr}
        if shipped is not None:
            row['shipped_img'] = upscale_bgr(shipped, lr)
            row['shipped'] = _score(row['shipped_img'], gt)
        rows.append(row)
    return rows


_COLUMNS = (('bicubic', 'Bicubic'), ('lksmn', 'LKSMN (this demo)'), ('shipped', 'LKSMN shipped model'))


def format_table(rows: List[dict]) -> str:
    """Markdown table: PSNR / SSIM per image and on average, one column per method."""
    columns = [(key, label) for key, label in _COLUMNS if key in rows[0]]
    lines = ['| image | ' + ' | '.join(f'{label} PSNR / SSIM' for _, label in columns) + ' |',
             '|---|' + '---|' * len(columns)]
    for row in rows:
        lines.append(f"| {row['image']} | " + ' | '.join(f"{row[key]['psnr']:.2f} / {row[key]['ssim']:.4f}"
                                                        for key, _ in columns) + ' |')
    mean = {key: {m: float(np.mean([r[key][m] for r in rows])) for m in ('psnr', 'ssim')} for key, _ in columns}
    lines.append('| **average** | ' + ' | '.join(f"{mean[key]['psnr']:.2f} / {mean[key]['ssim']:.4f}"
                                                for key, _ in columns) + ' |')
    return '\n'.join(lines)


def _busiest_crop(gt: np.ndarray, size: int) -> tuple:
    """Top-left corner of the ``size`` crop with the most detail (gradient energy), for the figure."""
    gray = cv2.cvtColor(gt, cv2.COLOR_BGR2GRAY).astype(np.float32)
    energy = np.abs(cv2.Laplacian(gray, cv2.CV_32F))
    integral = cv2.integral(energy)
    best, corner = -1.0, (0, 0)
    for y in range(0, gt.shape[0] - size + 1, size // 4):
        for x in range(0, gt.shape[1] - size + 1, size // 4):
            total = integral[y + size, x + size] - integral[y, x + size] - integral[y + size, x] + integral[y, x]
            if total > best:
                best, corner = total, (y, x)
    return corner


def comparison_figure(rows: List[dict], crop: int = 128, zoom: int = 2) -> np.ndarray:
    """Rows of [Bicubic | LKSMN demo | (LKSMN shipped) | Ground truth] crops, enlarged with nearest neighbours."""
    tiles = []
    for row in rows:
        y, x = _busiest_crop(row['gt'], min(crop, *row['gt'].shape[:2]))
        size = min(crop, *row['gt'].shape[:2])
        panels = []
        labels = [('bicubic_img', f"Bicubic {row['bicubic']['psnr']:.2f} dB"),
                  ('lksmn_img', f"LKSMN demo {row['lksmn']['psnr']:.2f} dB")]
        if 'shipped' in row:
            labels.append(('shipped_img', f"LKSMN shipped {row['shipped']['psnr']:.2f} dB"))
        for key, label in labels + [('gt', 'Ground truth')]:
            panel = cv2.resize(row[key][y:y + size, x:x + size], None, fx=zoom, fy=zoom,
                               interpolation=cv2.INTER_NEAREST)
            panel = cv2.copyMakeBorder(panel, 24, 4, 4, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
            cv2.putText(panel, f"{row['image']}: {label}" if key == 'bicubic_img' else label, (6, 17),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            panels.append(panel)
        tiles.append(np.hstack(panels))
    return np.vstack(tiles)


def run_demo(out: Path, iterations: int = 2000, batch_size: int = 8) -> Dict[str, object]:
    """Make the data, train, test and score; returns the table, the figure path and the timings."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text('made by lksmn-demo; a re-run replaces this folder\n')
    timings = {}
    start = time.time()
    data = make_demo_data(out / 'data')
    timings['data'] = time.time() - start

    options = demo_options(data, out, iterations, batch_size)
    option_dir = out / 'options'
    option_dir.mkdir(exist_ok=True)
    for kind, opt in options.items():
        (option_dir / f'{kind}_{NAME}.yml').write_text(yaml.safe_dump(opt, sort_keys=False))

    start = time.time()
    run_training(['-opt', str(option_dir / f'train_{NAME}.yml')], root_path=str(out))
    timings['train'] = time.time() - start

    start = time.time()
    run_testing(['-opt', str(option_dir / f'test_{NAME}.yml')], root_path=str(out))
    timings['test'] = time.time() - start

    rows = score_results(data, out / 'results' / NAME, shipped_upscaler())
    figure = out / 'comparison.png'
    cv2.imwrite(str(figure), comparison_figure(rows))
    mean_gain = float(np.mean([r['lksmn']['psnr'] - r['bicubic']['psnr'] for r in rows]))
    shipped_gain = (float(np.mean([r['shipped']['psnr'] - r['bicubic']['psnr'] for r in rows]))
                    if 'shipped' in rows[0] else None)
    return {'table': format_table(rows), 'figure': figure, 'timings': timings, 'psnr_gain': mean_gain,
            'shipped_gain': shipped_gain,
            'checkpoint': out / 'experiments' / NAME / 'models' / 'net_g_latest.pth'}
