"""Recipe study: LKSMN x4 trained with several recipes for the same wall-clock budget, scored on the validation split.

Each recipe (``RECIPES``: LR patch, batch, learning rate, EMA, precision, how often the sources stored
without WebP's losses are drawn, and which HR photos: as built, or a variant of ``HR_VARIANTS`` made in
``--out``/data/) becomes an option file made from
``options/train_LKSMN_x4_openphotos.yml`` (cosine schedule over the whole run, validation on the open-photos
validation split eight times per run, the fastest training path of this machine: ``train.precision`` and
``train.channels_last`` left at auto) and runs through ``lksmn-train --auto_resume`` at a lower priority
(``nice``), one after the other, so that a stopped study continues where it was.

Equal wall-clock on a shared machine: a run's iteration budget is ``--minutes`` divided by the time of one
iteration of its LR patch and batch, read from a ``benchmarks/train_speed.py`` JSON measured on this machine
while it was quiet (BasicSR's LMDB dataloader rows when present). So every recipe gets the iterations it would
run in that many minutes alone on the machine, whatever else runs beside the study.

    .venv/bin/python benchmarks/train_speed.py --data /work/openphotos --patches 16 24 32 48 \\
        --networks LKSMN --json /work/study/speed.json
    .venv/bin/python benchmarks/recipe_study.py --data /work/openphotos --speed /work/study/speed.json \\
        --minutes 20 --out /work/study --json benchmarks/results/recipe_study_x4.json \\
        --markdown benchmarks/results/recipe_study_x4.md

The test split is never read: recipes are chosen on the validation split only.
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import yaml

from report import save_report  # benchmarks/report.py, beside this script

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / 'options' / 'train_LKSMN_x4_openphotos.yml'
SCALE = 4
VAL_TIMES = 8  # validations per run: the learning curve

class Recipe(NamedTuple):
    """One training recipe: what differs from the template option file."""
    lr_patch: int
    batch: int
    lr: float
    ema_decay: float = 0.0
    precision: str = 'auto'  # train.precision; a recipe at fp32 gets the iterations of its default-path twin
    lkcd_depthwise_fp32: Any = 'auto'  # train.lkcd_depthwise_fp32: auto, True or False
    lossless_weight: int = 1  # how often a sub-image of a source stored losslessly or as JPEG is drawn per WebP one
    hr_variant: str = 'as built'  # the training photos as lksmn-prepare built them, or one of HR_VARIANTS
    # progressive patches: (share of the time, LR patch) per stage, smallest first; lr_patch is the largest
    progressive: Tuple[Tuple[float, int], ...] = ()


RECIPES: Dict[str, Recipe] = {
    'p16_b8_lr2e-3': Recipe(16, 8, 2e-3),
    'p24_b8_lr2e-3': Recipe(24, 8, 2e-3),
    'p32_b8_lr2e-3': Recipe(32, 8, 2e-3),
    'p48_b8_lr2e-3': Recipe(48, 8, 2e-3),
    'p16_b8_lr2e-3_fp32': Recipe(16, 8, 2e-3, precision='fp32'),  # bf16 against fp32 at equal iterations
    'p16_b8_lr2e-3_jpeg3': Recipe(16, 8, 2e-3, lossless_weight=3),  # the WebP sources drawn a third as often
    'p16_b16_lr2e-3': Recipe(16, 16, 2e-3),
    'p16_b8_lr1e-3': Recipe(16, 8, 1e-3),
    'p16_b8_lr4e-3': Recipe(16, 8, 4e-3),
    'p32_b16_lr1e-3_ema': Recipe(32, 16, 1e-3, ema_decay=0.999),  # the shipped model's recipe
    # the data variants, on the path their baseline p16_b8_lr2e-3 took in that study (its timed start, on a busy
    # machine, chose plain bf16): so that they differ from it in their photos only
    'p16_b8_lr2e-3_multiscale': Recipe(16, 8, 2e-3, precision='bf16', lkcd_depthwise_fp32=False,
                                       hr_variant='multiscale'),
    'p16_b8_lr2e-3_webp_x3': Recipe(16, 8, 2e-3, precision='bf16', lkcd_depthwise_fp32=False, hr_variant='webp_x3'),
    'p16_b8_lr4e-3_plain_bf16': Recipe(16, 8, 4e-3, precision='bf16', lkcd_depthwise_fp32=False),  # the same study
    # batch and EMA at equal time, on the same path as that study's baseline
    'p16_b16_lr2e-3_plain_bf16': Recipe(16, 16, 2e-3, precision='bf16', lkcd_depthwise_fp32=False),
    'p16_b32_lr2e-3_plain_bf16': Recipe(16, 32, 2e-3, precision='bf16', lkcd_depthwise_fp32=False),
    'p16_b8_lr2e-3_ema_plain_bf16': Recipe(16, 8, 2e-3, ema_decay=0.999, precision='bf16', lkcd_depthwise_fp32=False),
    # a progressive schedule: 16x16 patches for 70% of the time, 32x32 for the last 30%
    'p16to32_b8_lr2e-3_plain_bf16': Recipe(32, 8, 2e-3, precision='bf16', lkcd_depthwise_fp32=False,
                                           progressive=((0.7, 16), (0.3, 32))),
}

# Training photos other than lksmn-prepare's (issue 25 item 3), made from its photos/train/ folder: factors by
# which (INTER_AREA) the photos stored as lossy WebP, and those stored otherwise (lossless, or JPEG at quality
# ~99: the 4K wallpapers), are used, each factor giving one HR photo. Sub-images, LR and LMDBs as the set's own.
HR_VARIANTS: Dict[str, Dict[str, Tuple[float, ...]]] = {
    # the photos not stored as WebP also at 2/3 and 1/2 of their size: more scales of the cleanest content
    'multiscale': {'webp': (1.0,), 'other': (1.0, 2 / 3, 1 / 2)},
    # the WebP photos at 2/3 of their size (a third of the stored image, as they are halved already), so that the
    # codec's artefacts shrink below a pixel; those whose short side falls below the 240-px sub-image drop out
    'webp_x3': {'webp': (2 / 3,), 'other': (1.0,)},
}


def seconds_per_iteration(speed: Dict[str, Any], patch: int, batch: int) -> float:
    """One LKSMN training iteration of this patch and batch on the path lksmn-train takes by default here
    (the rows marked ``default`` in the speed file; in older files ``default_path``, and without it the fastest
    eager path), dataloader rows first."""
    rows = [r for r in speed['rows'] if r['network'] == 'LKSMN' and r['lr_patch'] == patch and r['batch'] == batch
            and 'compiled' not in r['path']]
    if any('default' in r for r in rows):  # marked per row (the precision timed per run)
        rows = [r for r in rows if r['default']]
    else:
        rows = [r for r in rows if r['path'] == speed.get('default_path', r['path'])]
    loaded = [r for r in rows if r['loader'] == 'LMDB dataloader']
    rows = loaded or rows
    if not rows:
        raise SystemExit(f'recipe_study.py: error: the speed file has no LKSMN row for LR patch {patch}, batch '
                         f'{batch} (run benchmarks/train_speed.py --patches {patch} --batch {batch})')
    return min(r['ms_per_iter'] for r in rows) / 1000


def read_speed_files(paths: Sequence[Path]) -> Dict[str, Any]:
    """Speed files of one machine as one: the first file's facts, every file's rows; files of another CPU refused."""
    files = [json.loads(Path(p).read_text()) for p in paths]
    for path, other in zip(paths[1:], files[1:]):
        if other['cpu'] != files[0]['cpu']:
            raise SystemExit(f'recipe_study.py: error: {path} was measured on {other["cpu"]}, {paths[0]} on '
                             f'{files[0]["cpu"]}: one machine\'s speed files only')
    return {**files[0], 'rows': [row for f in files for row in f['rows']]}


def stage_iterations(recipe: Recipe, speed: Dict[str, Any], minutes: float) -> List[int]:
    """The iterations of each of a recipe's stages (one, unless progressive) in ``minutes`` of quiet time."""
    stages = recipe.progressive or ((1.0, recipe.lr_patch),)
    return [int(round(minutes * 60 * share / seconds_per_iteration(speed, patch, recipe.batch), -1))
            for share, patch in stages]


def _webp_ids() -> set:
    """The ids of the manifest's photos stored as lossy WebP (the manifest's member or path)."""
    manifest = json.loads((REPO / 'lksmn_arch' / 'data' / 'open_photos.json').read_text())['photos']
    return {p['id'] for p in manifest if (p.get('member') or p['path']).lower().endswith('.webp')}


def build_hr_variant(data: Path, folder: Path, variant: str) -> Path:
    """The training set of ``HR_VARIANTS[variant]`` in ``folder`` (photos, then sub-images, LR and LMDBs with
    the open-photos set's own settings); finished files are kept, so a second call only checks. Returns the
    folder that holds its ``openphotos_train_*`` LMDBs."""
    from lksmn_arch.data.open_photos import SUB_IMAGES, TRAIN_NAME
    from lksmn_arch.data.prepare import prepare_div2k, read_image, write_png_atomic
    factors = HR_VARIANTS[variant]
    webp = _webp_ids()
    photos = folder / 'photos'
    photos.mkdir(parents=True, exist_ok=True)
    for source in sorted((data / 'photos' / 'train').glob('*.png')):
        for factor in factors['webp' if source.stem in webp else 'other']:
            target = photos / (source.name if factor == 1 else f'{source.stem}_scaled{round(factor * 100)}.png')
            if target.exists():
                continue
            image = read_image(source)
            if factor != 1:
                height, width = image.shape[:2]
                image = cv2.resize(image, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)
            write_png_atomic(image, target)
    prepare_div2k([photos], folder, TRAIN_NAME, SUB_IMAGES, workers=2, lmdb=True)  # too small: a warning each
    return folder


def recipe_options(name: str, data: Path, iterations: int, meta_info_folder: Path,
                   train_data: Optional[Path] = None, stages: Sequence[int] = ()) -> Dict[str, Any]:
    """The option file of one recipe; ``train_data``: the folder of its training LMDBs (default ``data``);
    ``stages``: the iterations of each progressive stage (``stage_iterations``), which sum to ``iterations``."""
    recipe = RECIPES[name]
    opt = yaml.safe_load(TEMPLATE.read_text())
    opt['name'] = f'study_{name}'
    train = opt['datasets']['train']
    if recipe.lossless_weight == 1:
        train_data = train_data or data
        train['dataroot_gt'] = str(train_data / 'openphotos_train_HR_sub.lmdb')
        train['dataroot_lq'] = str(train_data / f'openphotos_train_LR_bicubic_X{SCALE}_sub.lmdb')
    else:  # BasicSR's meta_info_file (disk backend) lists a sub-image once per draw
        train['dataroot_gt'] = str(data / 'openphotos_train_HR_sub')
        train['dataroot_lq'] = str(data / f'openphotos_train_LR_bicubic_X{SCALE}_sub')
        train['io_backend'] = {'type': 'disk'}
        train['meta_info_file'] = str(weighted_meta_info(data, meta_info_folder, recipe.lossless_weight))
    train['gt_size'] = recipe.lr_patch * SCALE
    train['batch_size_per_gpu'] = recipe.batch
    opt['datasets']['val'] = {'name': 'openphotos_val', 'type': 'PairedImageDataset',
                              'dataroot_gt': str(data / 'openphotos_val' / f'GTmod{SCALE}'),
                              'dataroot_lq': str(data / 'openphotos_val' / f'LRbicx{SCALE}'),
                              'io_backend': {'type': 'disk'}}
    opt['train']['ema_decay'] = recipe.ema_decay
    opt['train']['optim_g']['lr'] = recipe.lr
    opt['train']['precision'] = recipe.precision
    opt['train']['lkcd_depthwise_fp32'] = recipe.lkcd_depthwise_fp32
    opt['train']['scheduler']['periods'] = [iterations]
    opt['train']['total_iter'] = iterations
    if recipe.progressive:
        starts = [sum(stages[:i]) for i in range(len(stages))]
        opt['train']['progressive_patches'] = [[start, patch] for start, (_, patch) in zip(starts, recipe.progressive)]
    every = max(1, iterations // VAL_TIMES)
    opt['val']['val_freq'] = every
    opt['logger']['save_checkpoint_freq'] = every
    opt['logger']['print_freq'] = max(1, min(200, every))
    return opt


def weighted_meta_info(data: Path, folder: Path, lossless_weight: int) -> Path:
    """A meta-info file of the training sub-images in which each sub-image of a photo not stored as lossy WebP
    (the manifest's member or path) appears ``lossless_weight`` times, so BasicSR draws it that much more often."""
    webp = _webp_ids()
    lines = []
    for path in sorted((data / 'openphotos_train_HR_sub').glob('*.png')):
        photo_id = path.stem.rsplit('_s', 1)[0]
        lines += [path.name] * (1 if photo_id in webp else lossless_weight)
    target = folder / f'meta_info_openphotos_train_lossless{lossless_weight}.txt'
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text('\n'.join(lines) + '\n')
    return target


PSNR = re.compile(r'# psnr: ([0-9.]+)')
TRAINING_PATH = re.compile(r'Training path: (.+?), (?:channels_last|NCHW) on ')  # LKSMNModel's log line


def learning_curve(log_text: str, val_every: int) -> List[Dict[str, float]]:
    """(iteration, validation PSNR) pairs from a BasicSR training log, in order: BasicSR validates at every
    multiple of ``val.val_freq`` (and once more after the last iteration, which repeats the final one)."""
    values = [float(m.group(1)) for m in PSNR.finditer(log_text)]
    return [{'iter': (k + 1) * val_every, 'psnr': v} for k, v in enumerate(values[:VAL_TIMES])]


def bicubic_psnr(data: Path) -> float:
    """MATLAB-bicubic PSNR (Y, border 4) of the validation split: the baseline of every gain."""
    sys.path.insert(0, str(REPO))
    import lksmn_arch  # noqa: F401
    from basicsr.metrics import calculate_psnr
    from lksmn_arch.data.prepare import bicubic_upscale
    values = []
    for gt_path in sorted((data / 'openphotos_val' / f'GTmod{SCALE}').glob('*.png')):
        gt = cv2.imread(str(gt_path))
        lr = cv2.imread(str(data / 'openphotos_val' / f'LRbicx{SCALE}' / gt_path.name))
        values.append(calculate_psnr(bicubic_upscale(lr, SCALE), gt, SCALE, input_order='HWC', test_y_channel=True))
    return sum(values) / len(values)


def run_recipe(name: str, data: Path, out: Path, stages: Sequence[int], nice: int) -> Dict[str, Any]:
    """Train one recipe for the iterations of its stages (resuming if it ran before) and read its learning curve
    from its logs."""
    iterations = sum(stages)
    option_file = out / 'options' / f'study_{name}.yml'
    option_file.parent.mkdir(parents=True, exist_ok=True)
    variant = RECIPES[name].hr_variant
    train_data = None if variant == 'as built' else build_hr_variant(data, out / 'data' / variant, variant)
    options = recipe_options(name, data, iterations, out / 'meta_info', train_data, stages)
    option_file.write_text(yaml.safe_dump(options, sort_keys=False))
    experiment = out / 'experiments' / f'study_{name}'
    done = experiment / 'models' / 'net_g_latest.pth'
    started = time.time()
    if not done.exists():
        command = ['nice', '-n', str(nice), str(Path(sys.executable).parent / 'lksmn-train'), '-opt',
                   str(option_file), '--auto_resume']
        print(f'[{name}] {iterations} iterations: {" ".join(command)}', flush=True)
        with open(out / f'study_{name}.console.log', 'a') as console:
            status = subprocess.run(command, cwd=out, stdout=console, stderr=subprocess.STDOUT).returncode
        if status != 0:
            raise SystemExit(f'recipe_study.py: error: {name} exited with status {status} '
                             f'(see {out / f"study_{name}.console.log"}); run again to resume')
    logs = sorted(experiment.glob('train_study_*.log'))
    text = '\n'.join(p.read_text(errors='replace') for p in logs)
    paths = TRAINING_PATH.findall(text)
    return {'recipe': name, **RECIPES[name]._asdict(), 'iterations': iterations, 'stage_iterations': list(stages),
            'training_path': paths[-1] if paths else None,
            'curve': learning_curve(text, max(1, iterations // VAL_TIMES)), 'wall_s_this_call': round(time.time() - started)}


def _path_taken(run: Dict[str, Any]) -> str:
    return f' ({run["training_path"]})' if run.get('training_path') else ''


def format_table(results: Dict[str, Any]) -> str:
    lines = [f'LKSMN x4, {results["minutes"]} minutes of this machine\'s quiet time per recipe ({results["cpu"]}), '
             f'scored on the open-photos validation split ({results["val_images"]} photos, Y, border 4; '
             f'MATLAB bicubic {results["bicubic_psnr"]:.2f} dB). Command: `{results["command"]}`', '',
             'Precision: the option (auto: timed at the start of the run), then the path the run took, from its '
             'log; a recipe at fp32 runs the iterations of its default-path twin (equal iterations, not equal time). '
             'Non-WebP weight: how many times each training sub-image of a photo not stored as lossy WebP is drawn '
             'per WebP one. HR photos: the training photos as lksmn-prepare built them, or a variant of them '
             '(recipe_study.py HR_VARIANTS). LR patch a→b: progressive patches, each stage its share of the time '
             '(recipe_study.py RECIPES; the iterations of each stage in the JSON).', '',
             '| recipe | LR patch | batch | lr | EMA | precision | non-WebP weight | HR photos | iterations | '
             'best val PSNR (at iter) | final val PSNR | final gain over bicubic |',
             '|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|']
    for r in results['runs']:
        if not r['curve']:
            continue
        best = max(r['curve'], key=lambda c: c['psnr'])
        final = r['curve'][-1]['psnr']
        patch = '→'.join(str(p) for _, p in r['progressive']) if r.get('progressive') else r['lr_patch']
        lines.append(f'| {r["recipe"]} | {patch} | {r["batch"]} | {r["lr"]:g} | {r["ema_decay"] or "none"} | '
                     f'{r.get("precision", "auto")}{_path_taken(r)} | {r.get("lossless_weight", 1)} | '
                     f'{r.get("hr_variant", "as built")} | {r["iterations"]} | {best["psnr"]:.3f} ({best["iter"]}) | {final:.3f} | '
                     f'{final - results["bicubic_psnr"]:+.2f} |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='recipe_study.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=Path, required=True, help='an lksmn-prepare open-photos folder')
    parser.add_argument('--speed', type=Path, nargs='+', required=True,
                        help="train_speed.py's JSON files, measured quietly here (their rows together)")
    parser.add_argument('--minutes', type=float, default=20, help='quiet wall-clock budget per recipe (default 20)')
    parser.add_argument('--recipes', nargs='+', default=list(RECIPES)[:4], choices=list(RECIPES))
    parser.add_argument('--out', type=Path, required=True, help='where the runs go (outside the repository)')
    parser.add_argument('--nice', type=int, default=10, help='niceness of the training runs (default 10)')
    parser.add_argument('--json', type=Path, help='write the results here')
    parser.add_argument('--markdown', type=Path, help='write the table here')
    args = parser.parse_args(argv)
    data, out = args.data.resolve(), args.out.resolve()
    if not (data / 'openphotos_val' / f'GTmod{SCALE}').is_dir():
        parser.error(f'--data {data} has no openphotos_val/GTmod{SCALE} (run lksmn-prepare open-photos)')
    speed = read_speed_files(args.speed)
    out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {'minutes': args.minutes, 'cpu': speed['cpu'],
                               'speed_file': ' '.join(map(str, args.speed)),
                               'command': 'python benchmarks/recipe_study.py ' + ' '.join(sys.argv[1:]),
                               'val_images': len(list((data / 'openphotos_val' / f'GTmod{SCALE}').glob('*.png'))),
                               'bicubic_psnr': round(bicubic_psnr(data), 4), 'runs': []}
    for name in args.recipes:
        results['runs'].append(run_recipe(name, data, out, stage_iterations(RECIPES[name], speed, args.minutes),
                                          args.nice))
        save_report(results, args.json, format_table(results), args.markdown)  # after every recipe
    return 0


if __name__ == '__main__':
    sys.exit(main())
