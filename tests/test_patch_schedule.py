"""Progressive patches (train.progressive_patches): read and checked, batches cropped in register, stages by iteration."""
import re

import cv2
import pytest
import torch
import torch.nn.functional as F

from conftest import paired_dataset_options, run_module, training_options, write_yaml
from lksmn_arch.cli import train as train_cli
from lksmn_arch.errors import TrainingError
from lksmn_arch.models.patch_schedule import crop_batch, lr_patch_at, read_patch_schedule


def _opt(schedule, gt_size=64, scale=4):
    return {'scale': scale, 'datasets': {'train': {'gt_size': gt_size}}, 'train': {'progressive_patches': schedule}}


def test_stages_are_read_as_start_and_lr_patch_and_each_iteration_falls_in_the_last_stage_begun():
    stages = read_patch_schedule(_opt([[0, 8], [100, 12], [250, 16]]))
    assert stages == [(0, 8), (100, 12), (250, 16)]
    assert [lr_patch_at(stages, i) for i in (1, 99, 100, 249, 250, 10 ** 6)] == [8, 8, 12, 12, 16, 16]
    assert read_patch_schedule({'train': {}}) == []


@pytest.mark.parametrize('schedule, message', [
    ('16', 'must be a list'),
    ([], 'must be a list'),
    ([[0, 16, 3]], r'progressive_patches\[0\] must be \[start iteration, LR patch\]'),
    ([[0, 8.5]], r'progressive_patches\[0\] must be'),
    ([[10, 8], [20, 16]], r'\[0\] must start at iteration 0'),
    ([[0, 8], [0, 16]], r'\[1\] starts at iteration 0, not after'),
    ([[0, 0], [5, 16]], 'at least 1'),
    ([[0, 8], [5, 12]], 'largest LR patch, 12, needs datasets.train.gt_size 48 at scale 4, got 64'),
])
def test_a_malformed_schedule_is_refused_naming_the_key_and_value(schedule, message):
    with pytest.raises(TrainingError, match=message):
        read_patch_schedule(_opt(schedule))


def test_each_pair_is_cropped_at_its_own_place_with_the_gt_crop_in_register_with_the_lr_crop():
    torch.manual_seed(0)
    gt = torch.rand(6, 3, 64, 64)
    lq = F.avg_pool2d(gt, 4)  # any pixel-aligned downscale: the GT crop must average to the LR crop
    lq_crop, gt_crop = crop_batch(lq, gt, 8, 4)
    assert lq_crop.shape == (6, 3, 8, 8) and gt_crop.shape == (6, 3, 32, 32)
    assert torch.allclose(F.avg_pool2d(gt_crop, 4), lq_crop)
    places = {tuple(torch.nonzero((lq[i] == lq_crop[i, :, :1, :1]).all(0))[0].tolist()) for i in range(6)}
    assert len(places) > 1  # not one place for the whole batch
    assert crop_batch(lq, gt, 16, 4)[0] is lq  # already that size: as it is


def test_a_malformed_schedule_stops_lksmn_train_with_one_line_naming_the_file_and_key(tiny_pairs, tmp_path, capsys):
    opt = training_options('bad_schedule', paired_dataset_options('train', tiny_pairs['train_gt'],
                                                                  tiny_pairs['train_lq'], 'train'), None)
    opt['train']['progressive_patches'] = [[0, 4], [2, 16]]  # gt_size 16 at x2 holds LR patches of 8 at most
    option_file = write_yaml(tmp_path / 'train.yml', opt)
    assert train_cli.main(['-opt', str(option_file)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert str(option_file) in lines[0] and 'train.progressive_patches' in lines[0] and 'gt_size 32' in lines[0]
    assert not (tmp_path / 'experiments').exists()


def test_a_run_trains_each_stage_at_its_patches_and_validates_on_whole_images(tiny_pairs, tmp_path):
    opt = training_options('progressive', paired_dataset_options('train', tiny_pairs['train_gt'],
                                                                 tiny_pairs['train_lq'], 'train'),
                           paired_dataset_options('val', tiny_pairs['val_gt'], tiny_pairs['val_lq'], 'val'),
                           total_iter=4, save_every=2, ema_decay=0.9)  # EMA: net_g stays in train mode in validation
    opt['train']['progressive_patches'] = [[0, 4], [3, 8]]  # LR 4x4 for iterations 1-2, then the dataset's 8x8
    opt['val']['save_img'] = True
    opt['val']['suffix'] = None
    result = run_module('lksmn_arch.cli.train', '-opt', str(write_yaml(tmp_path / 'train.yml', opt)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / 'experiments' / 'progressive'
    log = next(experiment.glob('train_progressive_*.log')).read_text()
    switches = re.findall(r'Progressive patches: LR patches of (\d+)x\d+ from iteration (\d+)', log)
    assert switches == [('4', '1'), ('8', '3')]
    saved = sorted((experiment / 'visualization').rglob('*.png'))
    assert saved and all(cv2.imread(str(p)).shape[:2] == (32, 32) for p in saved)  # the whole 32x32 GT size
