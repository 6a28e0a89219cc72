"""The shipped model's figures for docs/models.md: PSNR/SSIM on held-out photos, and precision agreement.

Scores (BasicSR's metrics: Y channel, border = scale, outputs rounded to uint8) on every test set given,
for MATLAB bicubic and for each model given: the shipped model (default), SAFMN trained with the same
recipe (``--safmn``, a checkpoint of ``benchmarks/train_peer.py``) and the demo recipe's model (``--demo``,
``lksmn-demo``'s checkpoint). All networks run whole images in fp32 with PyTorch on the CPU. Then the
shipped model's other paths (PyTorch bf16, OpenVINO fp32 and bf16 where installed) are compared with its
fp32 output on the first test set: PSNR change, largest pixel difference, non-finite values.

    .venv/bin/python benchmarks/model_card.py --data datasets/openphotos --safmn SAFMN.pth --demo demo.pth \\
        --json benchmarks/results/model_card_x4.json --markdown benchmarks/results/model_card_x4.md

docs/models.md holds the markdown file verbatim (a test checks it).
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lksmn_arch  # noqa: E402,F401  (compatibility fixes before basicsr)
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402

from lksmn_arch.atomic import replace_atomically  # noqa: E402
from lksmn_arch.checkpoint import build_model_from_checkpoint, load_state_dict  # noqa: E402
from lksmn_arch.demo import bicubic_upscale, upscale_bgr  # noqa: E402
from lksmn_arch.inference import Upscaler  # noqa: E402
from lksmn_arch.pretrained import default_model  # noqa: E402

SCALE = 4
TEST_SETS = (('openphotos_test', 'open photos, held out (20)'), ('demo_heldout', "the demo's held-out photos (3)"))


def scores(image: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    """PSNR/SSIM on Y, border = scale, as BasicSR's test pipeline computes them."""
    return {'psnr': float(calculate_psnr(image, gt, SCALE, input_order='HWC', test_y_channel=True)),
            'ssim': float(calculate_ssim(image, gt, SCALE, input_order='HWC', test_y_channel=True))}


def pairs(folder: Path) -> List[Tuple[Path, Path]]:
    """(GT, LR) file pairs of a GTmod{s}/LRbicx{s} test set."""
    gts = sorted((folder / f'GTmod{SCALE}').glob('*.png'))
    if not gts:
        raise SystemExit(f'model_card.py: error: {folder / f"GTmod{SCALE}"} holds no PNG (run lksmn-prepare open-photos)')
    return [(gt, folder / f'LRbicx{SCALE}' / gt.name) for gt in gts]


def load_safmn(path: Path) -> torch.nn.Module:
    """SAFMN (spandrel's class, as train_peer.py trains it) with a checkpoint's EMA weights."""
    from equal_budget import _peer_classes
    model = _peer_classes()['SpandrelSAFMN'](upscale=SCALE)
    model.load_state_dict(load_state_dict(path), strict=True)
    return model.eval()


def evaluate(models: Dict[str, Upscaler], data: Path) -> Dict[str, dict]:
    """Per test set and image: bicubic and every model's scores; plus the means."""
    results = {}
    for folder, label in TEST_SETS:
        per_image: Dict[str, Dict[str, dict]] = {}
        for gt_path, lr_path in tqdm(pairs(data / folder), desc=folder, unit='img'):
            gt, lr = cv2.imread(str(gt_path)), cv2.imread(str(lr_path))
            row = {'bicubic': scores(bicubic_upscale(lr), gt)}
            for name, upscaler in models.items():
                row[name] = scores(upscale_bgr(upscaler, lr), gt)
            per_image[gt_path.stem] = row
        methods = list(next(iter(per_image.values())))
        mean = {m: {k: float(np.mean([row[m][k] for row in per_image.values()])) for k in ('psnr', 'ssim')}
                for m in methods}
        results[folder] = {'label': label, 'images': len(per_image), 'mean': mean, 'per_image': per_image}
    return results


def precision_agreement(checkpoint: Path, data: Path) -> Dict[str, dict]:
    """The shipped model's bf16 and OpenVINO paths against its PyTorch fp32 output on the first test set."""
    from lksmn_arch.latency import runtime_installed
    paths: Dict[str, Upscaler] = {'torch bf16': Upscaler.from_checkpoint(str(checkpoint), device='cpu',
                                                                         precision='bf16', progress=False)}
    if runtime_installed('openvino'):
        from lksmn_arch.upscale import build_upscaler
        for precision in ('fp32', 'bf16'):
            paths[f'OpenVINO {precision}'] = build_upscaler(checkpoint, backend='openvino', device='cpu',
                                                            precision=precision, progress=False)
    reference = Upscaler.from_checkpoint(str(checkpoint), device='cpu', progress=False)
    rows = {name: {'psnr_change': [], 'max_abs_diff': 0.0, 'non_finite': 0} for name in paths}
    for gt_path, lr_path in tqdm(pairs(data / TEST_SETS[0][0]), desc='precision', unit='img'):
        gt, lr = cv2.imread(str(gt_path)), cv2.imread(str(lr_path))
        rgb = lr[..., ::-1].astype(np.float32) / 255.0
        base = reference.upscale_image(rgb)
        base_psnr = scores(upscale_bgr(reference, lr), gt)['psnr']
        for name, upscaler in paths.items():
            out = upscaler.upscale_image(rgb)
            rows[name]['non_finite'] += int((~np.isfinite(out)).sum())
            rows[name]['max_abs_diff'] = max(rows[name]['max_abs_diff'], float(np.nanmax(np.abs(out - base))))
            rows[name]['psnr_change'].append(scores(upscale_bgr(upscaler, lr), gt)['psnr'] - base_psnr)
    return {name: {'psnr_change_mean': float(np.mean(r['psnr_change'])),
                   'psnr_change_worst': float(max(r['psnr_change'], key=abs)),
                   'max_abs_diff': r['max_abs_diff'], 'non_finite': r['non_finite']} for name, r in rows.items()}


LABELS = {'bicubic': 'MATLAB bicubic', 'shipped': 'LKSMN, shipped model', 'safmn': 'SAFMN, same recipe',
          'demo': "LKSMN, the demo's recipe"}


def markdown(report: dict) -> str:
    """The tables of docs/models.md."""
    lines = []
    for folder, result in report['scores'].items():
        methods = list(result['mean'])
        lines += [f"**{result['label']}**, x{SCALE}, PSNR (dB) / SSIM on Y, border {SCALE}:", '',
                  '| method | PSNR / SSIM | over bicubic |', '|---|---|---:|']
        bicubic = result['mean']['bicubic']['psnr']
        for method in methods:
            mean = result['mean'][method]
            gain = '' if method == 'bicubic' else f"{mean['psnr'] - bicubic:+.2f} dB"
            lines.append(f"| {LABELS.get(method, method)} | {mean['psnr']:.2f} / {mean['ssim']:.4f} | {gain} |")
        lines.append('')
    if report.get('precision'):
        lines += [f"The shipped model's other paths against its PyTorch fp32 output ({report['scores'][TEST_SETS[0][0]]['images']} "
                  'held-out open photos):', '', '| path | PSNR change (mean / worst image) | largest pixel difference | '
                  'non-finite values |', '|---|---|---:|---:|']
        for name, row in report['precision'].items():
            lines.append(f"| {name} | {row['psnr_change_mean']:+.4f} / {row['psnr_change_worst']:+.4f} dB | "
                         f"{row['max_abs_diff']:.4f} | {row['non_finite']} |")
        lines.append('')
    lines.append(f"Measured by `{report['command']}` ({report['seconds']:.0f} s, {report['cpu']}).")
    return '\n'.join(lines) + '\n'


def _cpu() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return 'unknown CPU'


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='benchmarks/model_card.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=Path, required=True, help='the folder lksmn-prepare open-photos wrote')
    parser.add_argument('--shipped', type=Path, default=None, help='the model to card (default: the shipped x4)')
    parser.add_argument('--safmn', type=Path, default=None, help='SAFMN checkpoint trained with the same recipe')
    parser.add_argument('--demo', type=Path, default=None, help="lksmn-demo's checkpoint (the demo's recipe)")
    parser.add_argument('--no-precision', action='store_true', help='skip the precision agreement')
    parser.add_argument('--json', type=Path, required=True, help='where the results go (JSON)')
    parser.add_argument('--markdown', type=Path, required=True, help='where the tables go (markdown)')
    args = parser.parse_args(argv)
    started = time.time()
    torch.manual_seed(0)
    shipped = args.shipped or default_model(SCALE).path
    models = {'shipped': Upscaler.from_checkpoint(str(shipped), device='cpu', progress=False)}
    if args.safmn:
        models['safmn'] = Upscaler(load_safmn(args.safmn), scale=SCALE, device='cpu', progress=False)
    if args.demo:
        models['demo'] = Upscaler(build_model_from_checkpoint(args.demo)[0], device='cpu', progress=False)
    report = {'scale': SCALE, 'shipped': str(shipped), 'scores': evaluate(models, args.data)}
    if not args.no_precision:
        report['precision'] = precision_agreement(shipped, args.data)
    shown = ['benchmarks/model_card.py'] + [a if not a.startswith('/') else Path(a).name for a in
                                            (sys.argv[1:] if argv is None else argv)]
    report.update(command=' '.join(shown), seconds=time.time() - started, cpu=_cpu(),
                  threads=torch.get_num_threads())
    for path, text in ((args.json, json.dumps(report, indent=1) + '\n'), (args.markdown, markdown(report))):
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda temp, text=text: temp.write_text(text), durable=False)
    print(markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
