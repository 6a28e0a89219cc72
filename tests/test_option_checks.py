"""A wrong option file is a clear error naming the key, path or file, before training starts."""
import shutil

import cv2
import numpy as np
import pytest

from conftest import paired_dataset_options, training_options, write_yaml
from lksmn_arch.cli import train as train_cli
from lksmn_arch.data.dataset_checks import DatasetError, name_files_in_sample_errors


@pytest.fixture
def pairs(tiny_pairs, tmp_path):
    """A private copy of the tiny training pairs that a test may break."""
    gt, lq = tmp_path / 'gt', tmp_path / 'lq'
    shutil.copytree(tiny_pairs['train_gt'], gt)
    shutil.copytree(tiny_pairs['train_lq'], lq)
    return gt, lq


def _train_error(tmp_path, capsys, opt) -> str:
    option_file = write_yaml(tmp_path / 'train.yml', opt)
    assert train_cli.main(['-opt', str(option_file)]) == 2
    assert not (tmp_path / 'experiments').exists()
    return capsys.readouterr().err


def _options(gt, lq, **changes):
    opt = training_options('checks', paired_dataset_options('train', gt, lq, 'train'), None)
    opt.update(changes)
    return opt


def test_missing_option_file_is_named(tmp_path, capsys):
    assert train_cli.main(['-opt', str(tmp_path / 'nope.yml')]) == 2
    assert 'nope.yml does not exist' in capsys.readouterr().err


def test_missing_dataroot_names_the_key_and_path(pairs, tmp_path, capsys):
    gt, lq = pairs
    err = _train_error(tmp_path, capsys, _options(gt, tmp_path / 'missing'))
    assert 'datasets.train.dataroot_lq' in err and 'missing does not exist' in err


def test_absent_dataroot_key_is_named(pairs, tmp_path, capsys):
    gt, lq = pairs
    opt = _options(gt, lq)
    del opt['datasets']['train']['dataroot_gt']
    assert 'datasets.train: missing key dataroot_gt' in _train_error(tmp_path, capsys, opt)


def test_empty_folder_is_named(pairs, tmp_path, capsys):
    gt, _ = pairs
    empty = tmp_path / 'empty'
    empty.mkdir()
    err = _train_error(tmp_path, capsys, _options(gt, empty))
    assert f'no images in {empty}' in err


def test_different_gt_and_lq_counts_are_reported(pairs, tmp_path, capsys):
    gt, lq = pairs
    next(iter(sorted(lq.iterdir()))).unlink()
    err = _train_error(tmp_path, capsys, _options(gt, lq))
    assert 'has 6 GT images but' in err and 'has 5 LQ images' in err


def test_gt_not_scale_times_lq_names_the_files(pairs, tmp_path, capsys):
    gt, lq = pairs
    cv2.imwrite(str(lq / '002.png'), np.zeros((15, 16, 3), np.uint8))
    err = _train_error(tmp_path, capsys, _options(gt, lq))
    assert '002.png' in err and 'must be exactly 2 times the LQ' in err


def test_scale_differing_from_network_upscale_is_reported(pairs, tmp_path, capsys):
    gt, lq = pairs
    err = _train_error(tmp_path, capsys, _options(gt, lq, scale=3))
    assert 'scale (3) differs from network_g.upscale (2)' in err


def test_unreadable_image_is_named_before_training(pairs, tmp_path, capsys):
    gt, lq = pairs
    (gt / '001.png').write_bytes(b'not a png')
    err = _train_error(tmp_path, capsys, _options(gt, lq))
    assert 'cannot read image' in err and '001.png' in err


def test_missing_required_key_is_named(pairs, tmp_path, capsys):
    gt, lq = pairs
    opt = _options(gt, lq)
    del opt['num_gpu']
    assert 'missing key num_gpu' in _train_error(tmp_path, capsys, opt)


def test_incomplete_lmdb_is_reported(pairs, tmp_path, capsys):
    gt, _ = pairs
    half_written = tmp_path / 'half.lmdb'
    half_written.mkdir()
    (half_written / 'data.mdb').write_bytes(b'')
    opt = training_options('checks', paired_dataset_options('train', half_written, half_written, 'train', 'lmdb'),
                           None)
    err = _train_error(tmp_path, capsys, opt)
    assert 'half.lmdb is not a complete LMDB' in err


def test_force_yml_of_an_unknown_key_is_reported(pairs, tmp_path, capsys):
    gt, lq = pairs
    option_file = write_yaml(tmp_path / 'train.yml', _options(gt, lq))
    assert train_cli.main(['-opt', str(option_file), '--force_yml', 'train:no_such_key=1']) == 2
    assert 'train:no_such_key is not a key' in capsys.readouterr().err


def test_a_sample_failing_at_load_time_names_its_files(pairs):
    from basicsr.data.paired_image_dataset import PairedImageDataset
    gt, lq = pairs
    name_files_in_sample_errors()
    dataset = PairedImageDataset(dict(paired_dataset_options('val', gt, lq, 'val'), phase='val', scale=2))
    (lq / '003.png').write_bytes(b'broken')
    index = [p['lq_path'] for p in dataset.paths].index(str(lq / '003.png'))
    with pytest.raises(DatasetError, match=r'cannot load sample .*003\.png'):
        dataset[index]


def test_a_stray_non_image_file_in_a_dataroot_is_named(pairs, tmp_path, capsys):
    """BasicSR reads every non-hidden file of the folder; a README there would fail inside a worker."""
    gt, lq = pairs
    (gt / 'notes.txt').write_text('not an image')
    (lq / 'notes.txt').write_text('not an image')
    (gt / '.hidden').write_text('ignored, as BasicSR ignores it')
    err = _train_error(tmp_path, capsys, _options(gt, lq))
    assert 'cannot read image' in err and 'notes.txt' in err
