"""The recipe study's bookkeeping: budgets from a speed file, learning curves from BasicSR's log, option files."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))

import recipe_study  # noqa: E402

LOG = """2026-12-02 11:40:01,000 INFO: [study..][epoch:  0, iter:   1,000, lr:(1.9e-03,)] [eta: 0:10:00] l_pix: 3e-02
2026-12-02 11:40:05,000 INFO: Validation openphotos_val
\t # psnr: 31.5000\tBest: 31.5000 @ 1000 iter
2026-12-02 11:45:05,000 INFO: Validation openphotos_val
\t # psnr: 32.2500\tBest: 32.2500 @ 2000 iter
2026-12-02 11:45:09,000 INFO: Validation openphotos_val
\t # psnr: 32.2500\tBest: 32.2500 @ 2000 iter
"""


def test_learning_curve_reads_each_validation_at_its_iteration_and_drops_the_final_repeat(monkeypatch):
    monkeypatch.setattr(recipe_study, 'VAL_TIMES', 2)
    assert recipe_study.learning_curve(LOG, 1000) == [{'iter': 1000, 'psnr': 31.5}, {'iter': 2000, 'psnr': 32.25}]


def test_budget_is_the_quiet_time_of_one_iteration_on_the_default_path_with_data_loading_first():
    row = {'network': 'LKSMN', 'lr_patch': 16, 'batch': 8}
    speed = {'default_path': 'bf16 channels_last', 'rows': [
        {**row, 'path': 'bf16 channels_last', 'loader': 'random tensors', 'ms_per_iter': 90.0},
        {**row, 'path': 'bf16 channels_last', 'loader': 'LMDB dataloader', 'ms_per_iter': 120.0},
        {**row, 'path': 'fp32 NCHW', 'loader': 'LMDB dataloader', 'ms_per_iter': 110.0},
        {**row, 'path': 'bf16 channels_last compiled', 'loader': 'LMDB dataloader', 'ms_per_iter': 60.0}]}
    assert recipe_study.seconds_per_iteration(speed, 16, 8) == pytest.approx(0.12)
    marked = {**speed, 'rows': [{**r, 'default': r['path'] == 'fp32 NCHW'} for r in speed['rows']]}
    assert recipe_study.seconds_per_iteration(marked, 16, 8) == pytest.approx(0.11)  # rows marked per run's choice
    del speed['default_path']  # an older file: the fastest eager path
    assert recipe_study.seconds_per_iteration(speed, 16, 8) == pytest.approx(0.11)
    with pytest.raises(SystemExit, match='LR patch 32, batch 8'):
        recipe_study.seconds_per_iteration(speed, 32, 8)


def test_recipe_options_validate_on_the_validation_split_never_the_test_split(tmp_path):
    opt = recipe_study.recipe_options('p24_b8_lr2e-3', tmp_path, 4000, tmp_path / 'meta')
    assert opt['datasets']['train']['gt_size'] == 96 and opt['datasets']['train']['batch_size_per_gpu'] == 8
    assert 'openphotos_val' in opt['datasets']['val']['dataroot_gt']
    assert 'openphotos_test' not in str(opt['datasets'])
    assert opt['train']['total_iter'] == 4000 and opt['train']['scheduler']['periods'] == [4000]
    assert opt['val']['val_freq'] == 4000 // recipe_study.VAL_TIMES


def test_the_open_photos_training_template_validates_on_the_validation_split():
    import yaml
    opt = yaml.safe_load((Path(__file__).resolve().parents[1] / 'options' / 'train_LKSMN_x4_openphotos.yml').read_text())
    assert 'openphotos_val' in opt['datasets']['val']['dataroot_gt']
    assert 'openphotos_test' not in str(opt['datasets'])


def test_a_weighted_recipe_draws_non_webp_sub_images_that_many_times_through_a_meta_info_file(tmp_path):
    hr = tmp_path / 'openphotos_train_HR_sub'
    hr.mkdir()
    for name in ('gcompris_erase_alpaca_s001.png', 'enlightenment_Bamboo_s001.png', 'enlightenment_Bamboo_s002.png'):
        (hr / name).write_bytes(b'')
    opt = recipe_study.recipe_options('p16_b8_lr2e-3_jpeg3', tmp_path, 100, tmp_path / 'meta')
    train = opt['datasets']['train']
    assert train['io_backend'] == {'type': 'disk'} and train['dataroot_gt'] == str(hr)
    lines = Path(train['meta_info_file']).read_text().split()
    assert lines.count('gcompris_erase_alpaca_s001.png') == 1  # a lossy WebP source: once
    assert lines.count('enlightenment_Bamboo_s001.png') == 3 and lines.count('enlightenment_Bamboo_s002.png') == 3


def test_an_fp32_recipe_sets_the_precision_and_keeps_its_twins_iterations(tmp_path):
    opt = recipe_study.recipe_options('p16_b8_lr2e-3_fp32', tmp_path, 12220, tmp_path / 'meta')
    assert opt['train']['precision'] == 'fp32' and opt['train']['total_iter'] == 12220
    assert recipe_study.recipe_options('p16_b8_lr2e-3', tmp_path, 1, tmp_path / 'meta')['train']['precision'] == 'auto'


def test_an_hr_variant_rescales_webp_and_other_photos_by_their_factors_and_trains_on_its_own_lmdbs(tmp_path):
    import cv2
    import numpy as np
    photos = tmp_path / 'data' / 'photos' / 'train'
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ('gcompris_erase_alpaca', 'enlightenment_Bamboo'):  # a lossy WebP source and a lossless one
        cv2.imwrite(str(photos / f'{name}.png'), rng.integers(0, 256, (300, 480, 3), dtype=np.uint8))
    made = recipe_study.build_hr_variant(tmp_path / 'data', tmp_path / 'variant', 'multiscale')
    sizes = {p.name: cv2.imread(str(p)).shape[:2] for p in (made / 'photos').glob('*.png')}
    assert sizes == {'gcompris_erase_alpaca.png': (300, 480), 'enlightenment_Bamboo.png': (300, 480),
                     'enlightenment_Bamboo_scaled67.png': (200, 320), 'enlightenment_Bamboo_scaled50.png': (150, 240)}
    assert (made / 'openphotos_train_HR_sub.lmdb').is_dir()  # the two smaller copies are below the 240-px crop
    assert len(list((made / 'openphotos_train_HR_sub').glob('*.png'))) == 2 * 6  # 2 rows x 3 columns per photo
    opt = recipe_study.recipe_options('p16_b8_lr2e-3_multiscale', tmp_path / 'data', 100, tmp_path / 'meta', made)
    assert opt['datasets']['train']['dataroot_gt'] == str(made / 'openphotos_train_HR_sub.lmdb')
    assert str(tmp_path / 'data' / 'openphotos_val') in opt['datasets']['val']['dataroot_gt']


def test_the_data_variants_are_pinned_to_their_baselines_path_and_the_table_names_the_path_each_run_took(tmp_path):
    opt = recipe_study.recipe_options('p16_b8_lr2e-3_webp_x3', tmp_path, 100, tmp_path / 'meta', tmp_path / 'v')
    assert (opt['train']['precision'], opt['train']['lkcd_depthwise_fp32']) == ('bf16', False)
    log = ('2026-12-04 01:29:40,618 INFO: Training path: bf16 autocast, channels_last on cpu (train.precision, '
           'train.channels_last, train.lkcd_depthwise_fp32).\n')
    assert recipe_study.TRAINING_PATH.findall(log) == ['bf16 autocast']
    run = {'recipe': 'p16_b8_lr2e-3', **recipe_study.RECIPES['p16_b8_lr2e-3']._asdict(), 'iterations': 100,
           'training_path': 'bf16 autocast', 'curve': [{'iter': 100, 'psnr': 32.0}]}
    table = recipe_study.format_table({'minutes': 1, 'cpu': 'a CPU', 'val_images': 11, 'bicubic_psnr': 31.45,
                                       'command': 'x', 'runs': [run]})
    assert '| auto (bf16 autocast) |' in table and '| as built |' in table


def test_the_model_card_holds_the_data_variant_study_as_the_study_wrote_it():
    written = (Path(__file__).resolve().parents[1] / 'benchmarks' / 'results' / 'recipe_study_data_x4.md').read_text()
    card = (Path(__file__).resolve().parents[1] / 'docs' / 'models.md').read_text()
    missing = [line for line in written.splitlines() if line.strip() and line not in card]
    assert not missing, missing[0]


def test_a_progressive_recipe_spends_each_stages_share_of_the_time_at_its_patches_and_its_options_pass_the_checks(tmp_path):
    from lksmn_arch.models.patch_schedule import read_patch_schedule
    row = {'network': 'LKSMN', 'batch': 8, 'path': 'bf16 channels_last', 'loader': 'LMDB dataloader', 'default': True}
    speed = {'rows': [{**row, 'lr_patch': 16, 'ms_per_iter': 60.0}, {**row, 'lr_patch': 32, 'ms_per_iter': 120.0}]}
    recipe = recipe_study.RECIPES['p16to32_b8_lr2e-3_plain_bf16']
    stages = recipe_study.stage_iterations(recipe, speed, 20)
    assert stages == [14000, 3000]  # 70% of 20 minutes at 60 ms, 30% at 120 ms
    assert recipe_study.stage_iterations(recipe_study.RECIPES['p16_b8_lr2e-3'], speed, 20) == [20000]
    opt = recipe_study.recipe_options('p16to32_b8_lr2e-3_plain_bf16', tmp_path, sum(stages), tmp_path / 'meta',
                                      stages=stages)
    assert opt['datasets']['train']['gt_size'] == 128  # the dataset crops the largest stage's patches
    assert opt['train']['total_iter'] == 17000 and opt['train']['scheduler']['periods'] == [17000]
    assert read_patch_schedule(opt) == [(0, 16), (14000, 32)]


def test_speed_files_of_one_machine_are_read_as_one_and_another_machines_refused(tmp_path):
    import json
    first, second, other = (tmp_path / f'{n}.json' for n in ('a', 'b', 'c'))
    first.write_text(json.dumps({'cpu': 'Xeon', 'scale': 4, 'rows': [{'batch': 8}]}))
    second.write_text(json.dumps({'cpu': 'Xeon', 'scale': 4, 'rows': [{'batch': 16}]}))
    other.write_text(json.dumps({'cpu': 'EPYC', 'rows': []}))
    merged = recipe_study.read_speed_files([first, second])
    assert merged['cpu'] == 'Xeon' and merged['rows'] == [{'batch': 8}, {'batch': 16}]
    with pytest.raises(SystemExit, match='measured on EPYC'):
        recipe_study.read_speed_files([first, other])
