"""A wrong option file is a clear error naming the key, path or file, before training starts."""
import shutil

import cv2
import numpy as np
import pytest

from conftest import REPO, paired_dataset_options, training_options, write_yaml
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


# --- hostile and careless option files (issue 22, second round): one line, exit status 2, nothing written ---

ALIAS_BOMB = ('unused:\n  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
              + ''.join(f'  {chr(98 + i)}: &{chr(98 + i)} [' + ', '.join([f'*{chr(97 + i)}'] * 9) + ']\n'
                        for i in range(8)))


def _with_val(gt, lq, **changes):
    opt = training_options('checks', paired_dataset_options('train', gt, lq, 'train'),
                           paired_dataset_options('val', gt, lq, 'val'))
    opt.update(changes)
    return opt


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def test_a_yaml_alias_bomb_under_an_unused_key_is_refused_before_anything_expands_it(pairs, tmp_path, capsys):
    gt, lq = pairs
    option_file = write_yaml(tmp_path / 'train.yml', _options(gt, lq))
    option_file.write_text(option_file.read_text() + ALIAS_BOMB)
    assert option_file.stat().st_size < 2048
    assert train_cli.main(['-opt', str(option_file)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert 'train.yml' in line and 'alias bomb' in line and 'under key unused' in line
    assert not (tmp_path / 'experiments').exists()


@pytest.mark.parametrize('text, message', [
    ('a: &x [1, *x]\n', 'refers to the value that holds it'),
    ('name: a\nname: b\n', 'key name appears twice'),
    ('a: ' + '[' * 200 + ']' * 200 + '\n', 'nested more than'),
    ('a: [1, 2\nb: 3\n', 'is not valid YAML: line 2'),
], ids=['recursive-alias', 'repeated-key', 'deep-nesting', 'bad-syntax'])
def test_yaml_that_basicsr_would_misread_or_choke_on_is_one_line(tmp_path, text, message):
    from lksmn_arch.training.options import OptionsError, read_option_file
    path = tmp_path / 'x.yml'
    path.write_text(text)
    with pytest.raises(OptionsError, match=message) as caught:
        read_option_file(str(path))
    assert '\n' not in str(caught.value)


@pytest.mark.parametrize('content, message', [
    (b'\x7fELF\x02\x01\x01\x00\x00\x00\x00', 'is a binary file'),
    (b'name: caf\xe9\n', 'is not UTF-8 text'),
], ids=['binary', 'not-utf8'])
def test_a_binary_file_given_as_opt_is_named(tmp_path, capsys, content, message):
    path = tmp_path / 'model.pth'
    path.write_bytes(content)
    assert train_cli.main(['-opt', str(path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(path) in line and message in line


def test_a_folder_given_as_opt_is_named_as_a_folder(tmp_path, capsys):
    assert train_cli.main(['-opt', str(tmp_path)]) == 2
    assert 'is a folder' in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize('total_iter', [-5, 0])
def test_a_non_positive_total_iter_is_refused_instead_of_saving_an_untrained_network(pairs, tmp_path, capsys,
                                                                                     total_iter):
    gt, lq = pairs
    opt = _options(gt, lq)
    opt['train']['total_iter'] = total_iter
    line = _one_error_line(_train_error(tmp_path, capsys, opt))
    assert f'train.total_iter must be an integer >= 1' in line and f'got {total_iter}' in line


def _set(opt, dotted, value):
    *parents, last = dotted.split('.')
    node = opt
    for key in parents:
        node = node[key]
    node[last] = value


@pytest.mark.parametrize('key, value, message', [
    ('train.total_iter', '4', "train.total_iter is the string '4', not a number"),
    ('datasets.train.batch_size_per_gpu', -2, 'datasets.train.batch_size_per_gpu must be an integer >= 1, got -2'),
    ('datasets.train.num_worker_per_gpu', -1, 'datasets.train.num_worker_per_gpu must be an integer >= 0, got -1'),
    ('logger.save_checkpoint_freq', 0, 'logger.save_checkpoint_freq must be an integer >= 1'),
    ('logger.print_freq', 0, 'logger.print_freq must be an integer >= 1'),
    ('val.val_freq', 0, 'val.val_freq must be an integer >= 1'),
    ('manual_seed', 'abc', "manual_seed must be an integer >= 0 (or ~ for a random one), got the string 'abc'"),
    ('scale', '2', "scale is the string '2', not a number: it must be an integer"),
    ('datasets.train.gt_size', 15, 'gt_size 15 must be a multiple of scale 2'),
    ('train.optim_g.betas', [0.9], 'train.optim_g.betas must be a list of two numbers'),
    ('train.scheduler.type', 'Cosine', "train.scheduler.type 'Cosine'"),
    ('train.precision', 'fp64', 'train.precision must be one of'),
], ids=lambda v: str(v))
def test_a_value_basicsr_would_fail_on_late_is_refused_naming_key_and_value(pairs, tmp_path, capsys, key, value,
                                                                            message):
    gt, lq = pairs
    opt = _with_val(gt, lq)
    _set(opt, key, value)
    line = _one_error_line(_train_error(tmp_path, capsys, opt))
    assert 'train.yml' in line and message in line
    assert 'differs from network_g.upscale' not in line


def test_a_number_yaml_reads_as_a_string_is_explained_with_the_spelling_that_works(pairs, tmp_path, capsys):
    gt, lq = pairs
    option_file = write_yaml(tmp_path / 'train.yml', _options(gt, lq))
    option_file.write_text(option_file.read_text().replace('lr: 0.001', 'lr: 1e-3'))
    assert train_cli.main(['-opt', str(option_file)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "train.optim_g.lr is the string '1e-3'" in line and 'YAML 1.1' in line and 'write 1.0e-3' in line


def test_the_suggested_spelling_of_an_exponent_number_reads_as_that_float():
    import yaml
    from lksmn_arch.training.options import yaml11_number
    for text in ('1e-3', '5e3', '2.5E4', '1.e-6', '-3e+2'):
        assert yaml.safe_load(f'v: {yaml11_number(text)}')['v'] == float(text)


@pytest.mark.parametrize('section, typo, key', [
    ('val', 'save_imgs', 'save_img'),
    ('logger', 'print_frq', 'print_freq'),
    ('train', 'ema_decy', 'ema_decay'),
    ('datasets.train', 'use_flip', 'use_hflip'),
    ('', 'manual_seeds', 'manual_seed'),
], ids=lambda v: str(v))
def test_a_near_miss_of_a_key_basicsr_reads_is_refused_naming_both(pairs, tmp_path, capsys, section, typo, key):
    gt, lq = pairs
    opt = _with_val(gt, lq)
    node = opt
    for part in filter(None, section.split('.')):
        node = node[part]
    node[typo] = node.pop(key, 0)
    line = _one_error_line(_train_error(tmp_path, capsys, opt))
    prefix = f'{section}.' if section else ''
    assert f'{prefix}{typo} is not a key BasicSR reads; did you mean {prefix}{key}?' in line


def test_a_key_of_another_model_type_next_to_the_one_it_resembles_is_left_alone(pairs, tmp_path):
    from lksmn_arch.training.options import check_option_keys
    gt, lq = pairs
    opt = _with_val(gt, lq)
    opt['train']['optim_d'] = {'type': 'Adam', 'lr': 1e-4}  # close to optim_g, which is there: not a typo
    check_option_keys(opt, 'train.yml')


@pytest.mark.parametrize('option_file', sorted((REPO / 'options').rglob('*.yml'))
                         + sorted((REPO / 'benchmarks' / 'options').glob('train_LKSMN_*.yml')), ids=lambda p: p.name)
def test_each_shipped_option_file_passes_the_key_and_value_checks(option_file):
    from lksmn_arch.training.options import check_option_keys, check_option_values
    from lksmn_arch.training.pipeline import load_options
    opt = load_options(str(option_file))
    check_option_keys(opt, str(option_file))
    check_option_values(opt, str(option_file), is_train=option_file.name.startswith('train'))


def test_a_gt_size_larger_than_the_training_images_is_refused_naming_one(pairs, tmp_path, capsys):
    gt, lq = pairs
    opt = _options(gt, lq)
    opt['datasets']['train']['gt_size'] = 64  # the GT images are 32x32
    line = _one_error_line(_train_error(tmp_path, capsys, opt))
    assert 'datasets.train.gt_size 64 is larger than the training GT images: 6 of 6' in line and '(32x32)' in line


def test_a_gt_size_larger_than_the_lmdb_patches_is_refused_from_meta_info(tmp_path):
    from lksmn_arch.data.dataset_checks import check_dataset_options
    roots = {}
    for kind, side in (('gt', 96), ('lq', 48)):
        root = roots[kind] = tmp_path / f'{kind}.lmdb'
        root.mkdir()
        (root / 'data.mdb').write_bytes(b'')
        (root / 'meta_info.txt').write_text(f'0001_s001.png ({side},{side},3) 1\n0001_s002.png ({side // 2},{side},3) 1\n')
    opt = paired_dataset_options('train', roots['gt'], roots['lq'], 'train', 'lmdb')
    check_dataset_options(opt, 2, 'datasets.train', patch_size=48)
    with pytest.raises(DatasetError, match=r'gt_size 64 is larger than the training GT images: 1 of 2 .*meta_info\.txt'
                                           r'.*0001_s002 \(96x48\)'):
        check_dataset_options(opt, 2, 'datasets.train', patch_size=64)


def test_a_folder_given_as_pretrain_network_g_is_named_as_a_folder(pairs, tmp_path, capsys):
    gt, lq = pairs
    opt = _options(gt, lq)
    opt['path']['pretrain_network_g'] = str(gt)
    line = _one_error_line(_train_error(tmp_path, capsys, opt))
    assert f'path.pretrain_network_g {gt} is a folder, not a checkpoint file' in line


@pytest.mark.parametrize('entry, message', [
    ('train:warmup_iter=[1,', 'does not parse as a list of literals'),
    ('train:warmup_iter=[__import__("os").getpid()]', 'only numbers, strings, booleans and lists'),
    ('train:warmup_iter=1=2', 'exactly one "="'),
    ('train:warmup_iter', 'exactly one "="'),
    ('train:total_iter=-5', "BasicSR would read -5 as the string '-5'"),
    ('train:warmup_iter=!!float x', 'is not a number after !!float'),
], ids=lambda v: str(v))
def test_a_force_yml_entry_that_does_not_parse_is_one_line(pairs, tmp_path, capsys, entry, message):
    gt, lq = pairs
    option_file = write_yaml(tmp_path / 'train.yml', _options(gt, lq))
    assert train_cli.main(['-opt', str(option_file), '--force_yml', entry]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f'--force_yml {entry}' in line and message in line
    assert not (tmp_path / 'experiments').exists()


def test_force_yml_values_are_read_as_basicsr_reads_them(pairs, tmp_path):
    from lksmn_arch.training.pipeline import load_options
    gt, lq = pairs
    option_file = write_yaml(tmp_path / 'train.yml', _options(gt, lq))
    opt = load_options(str(option_file), ['train:total_iter=7', 'train:optim_g:lr=!!float 2e-4',
                                          'train:scheduler:milestones=[10, 20]', 'name=other', 'train:ema_decay=~'])
    assert opt['train']['total_iter'] == 7 and opt['train']['optim_g']['lr'] == 2e-4
    assert opt['train']['scheduler']['milestones'] == [10, 20] and opt['name'] == 'other'
    assert opt['train']['ema_decay'] is None
