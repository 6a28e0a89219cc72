"""A shipped model's figures for docs/models.md: PSNR/SSIM on held-out photos, and precision agreement.

Scores (BasicSR's metrics: Y channel, border = scale, outputs rounded to uint8) on every test set given,
for MATLAB bicubic and for each model given: the shipped model (default), SAFMN trained with the same
recipe (``--safmn``, a checkpoint of ``benchmarks/train_peer.py``), the demo recipe's model (``--demo``,
``lksmn-demo``'s checkpoint) and the model shipped before (``--previous``), at ``--scale`` 2, 3 or 4. The test
split is scored, then the validation split the checkpoints were chosen on, then the demo's photos. All networks
run whole images (tile=0: never tiled, whatever the memory model would choose) in fp32 with PyTorch on the CPU. Then the
shipped model's other paths (PyTorch bf16, OpenVINO fp32 and bf16 where installed) are compared with its
fp32 output on the first test set: PSNR change, largest pixel difference, non-finite values. The data table
comes from the manifest; with ``--train-log`` the wall time of each run to ``--iterations``.

    .venv/bin/python benchmarks/model_card.py --data datasets/openphotos --scale 4 --previous old.pth \\
        --json benchmarks/results/model_card_x4.json --markdown benchmarks/results/model_card_x4.md

docs/models.md holds the markdown file verbatim (a test checks it).
"""
import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lksmn_arch  # noqa: E402,F401  (compatibility fixes before basicsr)
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402

from lksmn_arch.utils.atomic import replace_atomically  # noqa: E402
from lksmn_arch.utils.checkpoint import build_model_from_checkpoint, load_state_dict  # noqa: E402
from lksmn_arch.utils.cpus import cpu_label  # noqa: E402
from lksmn_arch.data.prepare import bicubic_upscale  # noqa: E402
from lksmn_arch.training.demo import upscale_bgr  # noqa: E402
from lksmn_arch.inference.upscaler import Upscaler  # noqa: E402
from lksmn_arch.weights.shipped import default_model  # noqa: E402
from learning_curve import ITERATION, LOG_LINE  # noqa: E402  (the BasicSR log format, read in one place)

TEST_SETS = (('openphotos_test', 'open photos, test split'),
             ('openphotos_val', 'open photos, validation split (checkpoints were chosen on it)'),
             ('demo_heldout', "the demo's held-out photos"))


def scores(image: np.ndarray, gt: np.ndarray, scale: int) -> Dict[str, float]:
    """PSNR/SSIM on Y, border = scale, as BasicSR's test pipeline computes them."""
    return {'psnr': float(calculate_psnr(image, gt, scale, input_order='HWC', test_y_channel=True)),
            'ssim': float(calculate_ssim(image, gt, scale, input_order='HWC', test_y_channel=True))}


def pairs(folder: Path, scale: int) -> List[Tuple[Path, Path]]:
    """(GT, LR) file pairs of a GTmod{s}/LRbicx{s} test set."""
    gts = sorted((folder / f'GTmod{scale}').glob('*.png'))
    if not gts:
        raise SystemExit(f'model_card.py: error: {folder / f"GTmod{scale}"} holds no PNG (run lksmn-prepare open-photos)')
    return [(gt, folder / f'LRbicx{scale}' / gt.name) for gt in gts]


def load_safmn(path: Path, scale: int) -> torch.nn.Module:
    """SAFMN (spandrel's class, as train_peer.py trains it) with a checkpoint's EMA weights."""
    from equal_budget import _peer_classes
    model = _peer_classes()['SpandrelSAFMN'](upscale=scale)
    model.load_state_dict(load_state_dict(path), strict=True)
    return model.eval()


def evaluate(models: Dict[str, Upscaler], data: Path, scale: int,
             keep: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, dict]:
    """Per test set and image: bicubic and every model's scores; plus the means. The shipped model's float
    outputs on the first set go into ``keep`` (the reference of the precision comparison)."""
    results = {}
    for folder, label in TEST_SETS:
        per_image: Dict[str, Dict[str, dict]] = {}
        for gt_path, lr_path in tqdm(pairs(data / folder, scale), desc=folder, unit='img'):
            gt, lr = cv2.imread(str(gt_path)), cv2.imread(str(lr_path))
            row = {'bicubic': scores(bicubic_upscale(lr, scale), gt, scale)}
            for name, upscaler in models.items():
                if name == 'shipped' and keep is not None and folder == TEST_SETS[0][0]:
                    keep[gt_path.stem] = upscaler.upscale_image(lr[..., ::-1].astype(np.float32) / 255.0)
                    row[name] = scores(_to_bgr_uint8(keep[gt_path.stem]), gt, scale)
                else:
                    row[name] = scores(upscale_bgr(upscaler, lr), gt, scale)
            per_image[gt_path.stem] = row
        methods = list(next(iter(per_image.values())))
        mean = {m: {k: float(np.mean([row[m][k] for row in per_image.values()])) for k in ('psnr', 'ssim')}
                for m in methods}
        results[folder] = {'label': label, 'images': len(per_image), 'mean': mean, 'per_image': per_image}
    return results


def _to_bgr_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)[..., ::-1])


def precision_agreement(checkpoint: Path, data: Path, scale: int, reference: Dict[str, np.ndarray],
                        images: Optional[int] = None) -> Dict[str, dict]:
    """The shipped model's other paths (PyTorch bf16, spandrel's model in fp16 and bf16, OpenVINO fp32 and bf16)
    against its PyTorch fp32 outputs (``reference``, by image) on the first test set (its first ``images``)."""
    from lksmn_arch.inference.latency import runtime_installed
    paths: Dict[str, Any] = {'torch bf16': Upscaler.from_checkpoint(str(checkpoint), device='cpu',
                                                                    precision='bf16', tile=0, progress=False)}
    if importlib.util.find_spec('spandrel') is not None:  # what spandrel-based tools run (supports_half/bfloat16)
        import lksmn_arch.spandrel_support as spandrel_support
        from spandrel import ModelLoader
        spandrel_support.install()
        for name, dtype in (('spandrel fp16', torch.float16), ('spandrel bf16', torch.bfloat16)):
            descriptor = ModelLoader().load_from_file(checkpoint)
            descriptor.model.to(dtype)
            paths[name] = (descriptor, dtype)
    if runtime_installed('openvino'):
        from lksmn_arch.inference.files import build_upscaler
        for precision in ('fp32', 'bf16'):
            paths[f'OpenVINO {precision}'] = build_upscaler(checkpoint, backend='openvino', device='cpu',
                                                            precision=precision, tile=0, progress=False)
    rows = {name: {'psnr_change': [], 'max_abs_diff': 0.0, 'non_finite': 0} for name in paths}
    for gt_path, lr_path in tqdm(pairs(data / TEST_SETS[0][0], scale)[:images], desc='precision', unit='img'):
        gt, lr = cv2.imread(str(gt_path)), cv2.imread(str(lr_path))
        rgb = lr[..., ::-1].astype(np.float32) / 255.0
        base = reference[gt_path.stem]
        base_psnr = scores(_to_bgr_uint8(base), gt, scale)['psnr']
        for name, runner in paths.items():
            if isinstance(runner, tuple):
                descriptor, dtype = runner
                x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(dtype)
                out = descriptor(x)[0].float().numpy().transpose(1, 2, 0)
            else:
                out = runner.upscale_image(rgb)
            rows[name]['non_finite'] += int((~np.isfinite(out)).sum())
            rows[name]['max_abs_diff'] = max(rows[name]['max_abs_diff'], float(np.nanmax(np.abs(out - base))))
            rows[name]['psnr_change'].append(scores(_to_bgr_uint8(np.nan_to_num(out)), gt, scale)['psnr'] - base_psnr)
    return {name: {'psnr_change_mean': float(np.mean(r['psnr_change'])),
                   'psnr_change_worst': float(max(r['psnr_change'], key=abs)),
                   'max_abs_diff': r['max_abs_diff'], 'non_finite': r['non_finite']} for name, r in rows.items()}


def data_summary() -> List[Dict[str, Any]]:
    """Photos per source and split, with their licences, from the manifest."""
    from lksmn_arch.data.open_photos import load_manifest
    rows: Dict[str, Dict[str, Any]] = {}
    for photo in load_manifest():
        row = rows.setdefault(photo.package, {'package': f'{photo.package} {photo.version}', 'train': 0, 'val': 0,
                                              'test': 0, 'licences': {}})
        row[photo.split] += 1
        row['licences'][photo.licence] = row['licences'].get(photo.licence, 0) + 1
    return list(rows.values())




def training_summary(log: Path, iterations: Optional[int]) -> Dict[str, Any]:
    """Wall time from the start of training to the log line of ``iterations`` (all sessions of a resumed run)."""
    from datetime import datetime
    start, reached, last = None, None, None
    for line in log.read_text().splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        stamp, text = datetime.strptime(match.group(1), '%Y-%m-%d %H:%M:%S'), match.group(2)
        if text.startswith('Start training') and start is None:
            start = stamp
        iteration = ITERATION.search(text)
        if iteration:
            last = int(iteration.group(1).replace(',', ''))
            if iterations is not None and last >= iterations and reached is None:
                reached = stamp
    return {'log': log.name, 'iterations': iterations if reached else last,
            'wall_hours': ((reached or stamp) - start).total_seconds() / 3600 if start else None}


LABELS = {'bicubic': 'MATLAB bicubic', 'shipped': 'LKSMN, shipped model (EMA weights)',
          'non_ema': 'LKSMN, same checkpoint, non-EMA weights', 'safmn': 'SAFMN, same recipe (EMA weights)',
          'demo': "LKSMN, the demo's recipe", 'previous': 'LKSMN, the x4 model shipped before (2026-12-01)'}


def markdown(report: dict) -> str:
    """The tables of docs/models.md."""
    lines = ['Data (photos per source, from `lksmn_arch/data/open_photos.json`):', '',
             '| package | train | validation | test | licences |', '|---|---:|---:|---:|---|']
    for row in report['data']:
        licences = ', '.join(f'{k} {v}' for k, v in sorted(row['licences'].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {row['package']} | {row['train']} | {row['val']} | {row['test']} | {licences} |")
    totals = ' | '.join(str(sum(r[split] for r in report['data'])) for split in ('train', 'val', 'test'))
    lines.append(f"| **all** | {totals} | |")
    lines.append('')
    for name, summary in (report.get('training') or {}).items():
        lines.append(f"- {LABELS.get(name, name)}: {summary['iterations']} iterations in "
                     f"{summary['wall_hours']:.2f} h of wall time ({summary['log']})")
    if report.get('training'):
        lines.append('')
    scale = report['scale']
    for folder, result in report['scores'].items():
        methods = list(result['mean'])
        lines += [f"**{result['label']} ({result['images']})**, x{scale}, PSNR (dB) / SSIM on Y, border {scale}:", '',
                  '| method | PSNR / SSIM | over bicubic |', '|---|---|---:|']
        bicubic = result['mean']['bicubic']['psnr']
        for method in methods:
            mean = result['mean'][method]
            gain = '' if method == 'bicubic' else f"{mean['psnr'] - bicubic:+.2f} dB"
            lines.append(f"| {LABELS.get(method, method)} | {mean['psnr']:.2f} / {mean['ssim']:.4f} | {gain} |")
        lines.append('')
    if report.get('precision'):
        lines += [f"The shipped model's other paths against its PyTorch fp32 output ({report['precision_images']} "
                  'test-split open photos):', '', '| path | PSNR change (mean / worst image) | largest pixel difference | '
                  'non-finite values |', '|---|---|---:|---:|']
        for name, row in report['precision'].items():
            lines.append(f"| {name} | {row['psnr_change_mean']:+.4f} / {row['psnr_change_worst']:+.4f} dB | "
                         f"{row['max_abs_diff']:.4f} | {row['non_finite']} |")
        lines.append('')
    lines.append(f"Measured by `{report['command']}` ({report['seconds']:.0f} s, {report['cpu']}).")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='benchmarks/model_card.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=Path, required=True, help='the folder lksmn-prepare open-photos wrote')
    parser.add_argument('--scale', type=int, default=4, choices=(2, 3, 4), help='upscaling factor (default 4)')
    parser.add_argument('--shipped', type=Path, default=None, help='the model to card (default: the shipped one)')
    parser.add_argument('--previous', type=Path, default=None, help='the model shipped before, for comparison')
    parser.add_argument('--safmn', type=Path, default=None, help='SAFMN checkpoint trained with the same recipe')
    parser.add_argument('--demo', type=Path, default=None, help="lksmn-demo's checkpoint (the demo's recipe)")
    parser.add_argument('--non-ema', type=Path, default=None,
                        help="the shipped model's training checkpoint: its non-EMA weights ('params') get a row too")
    parser.add_argument('--no-precision', action='store_true', help='skip the precision agreement')
    parser.add_argument('--precision-images', type=int, default=None, metavar='N',
                        help='the precision agreement on the first N test photos only (default: all)')
    parser.add_argument('--train-log', nargs='+', default=None, metavar='LOG',
                        help="BasicSR train logs of the shipped model's run (and SAFMN's): wall time to --iterations")
    parser.add_argument('--iterations', type=int, nargs='+', default=None, metavar='N',
                        help="the iteration each --train-log's checkpoint is of (one for all, or one per log)")
    parser.add_argument('--json', type=Path, required=True, help='where the results go (JSON)')
    parser.add_argument('--markdown', type=Path, required=True, help='where the tables go (markdown)')
    args = parser.parse_args(argv)
    started = time.time()
    torch.manual_seed(0)
    shipped = args.shipped or default_model(args.scale).path
    models = {'shipped': Upscaler.from_checkpoint(str(shipped), device='cpu', tile=0, progress=False)}
    if models['shipped'].scale != args.scale:
        raise SystemExit(f'model_card.py: error: {shipped} is an x{models["shipped"].scale} model, not x{args.scale}')
    if args.previous:
        models['previous'] = Upscaler.from_checkpoint(str(args.previous), device='cpu', tile=0, progress=False)
    if args.safmn:
        models['safmn'] = Upscaler(load_safmn(args.safmn, args.scale), scale=args.scale, device='cpu', tile=0, progress=False)
    if args.non_ema:
        from lksmn_arch import LKSMN
        from lksmn_arch.utils.checkpoint import infer_lksmn_config, read_checkpoint
        state = read_checkpoint(args.non_ema)['params']
        network = LKSMN(**infer_lksmn_config(state))
        network.load_state_dict(state)
        models['non_ema'] = Upscaler(network, device='cpu', tile=0, progress=False)
    if args.demo:
        models['demo'] = Upscaler(build_model_from_checkpoint(args.demo)[0], device='cpu', tile=0, progress=False)
    reference: Dict[str, np.ndarray] = {}
    report = {'scale': args.scale, 'shipped': str(shipped), 'data': data_summary(),
              'scores': evaluate(models, args.data, args.scale, reference)}
    if args.train_log:
        iterations = args.iterations or [None]
        if len(iterations) not in (1, len(args.train_log)):
            parser.error(f'--iterations takes one value or one per --train-log ({len(args.train_log)}), '
                         f'got {len(iterations)}')
        iterations = iterations * len(args.train_log) if len(iterations) == 1 else iterations
        report['training'] = {name: training_summary(Path(log), its) for name, log, its in
                              zip(('shipped', 'safmn'), args.train_log, iterations)}
    if not args.no_precision:
        report['precision'] = precision_agreement(shipped, args.data, args.scale, reference, args.precision_images)
        report['precision_images'] = args.precision_images or report['scores'][TEST_SETS[0][0]]['images']
    shown = ['benchmarks/model_card.py'] + [a if not a.startswith('/') else Path(a).name for a in
                                            (sys.argv[1:] if argv is None else argv)]
    report.update(command=' '.join(shown), seconds=time.time() - started, cpu=cpu_label(),
                  threads=torch.get_num_threads())
    for path, text in ((args.json, json.dumps(report, indent=1) + '\n'), (args.markdown, markdown(report))):
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda temp, text=text: temp.write_text(text), durable=False)
    print(markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
