"""Training and testing through BasicSR's own pipelines, from option files, as a user runs them."""
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, free_port, paired_dataset_options, run_module, training_options, write_yaml

PSNR_LINE = re.compile(r'# psnr: ([0-9.]+)')


def _log_text(folder: Path, prefix: str) -> str:
    logs = sorted(folder.glob(f'{prefix}_*.log'))
    assert logs, f'no {prefix} log in {folder}'
    return logs[-1].read_text()


def _make_lmdb(folder: Path, target: Path) -> Path:
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    names = sorted(p.name for p in folder.glob('*.png'))
    target.parent.mkdir(parents=True, exist_ok=True)
    make_lmdb_from_imgs(str(folder), str(target), names, [Path(n).stem for n in names], map_size=1 << 26)
    return target


@pytest.fixture(scope='module')
def trained_run(tiny_pairs, tmp_path_factory):
    """A 4-iteration run on disk data with validation, as ``python -m lksmn_arch.cli.train`` from its folder."""
    workdir = tmp_path_factory.mktemp('train_disk')
    opt = training_options(
        'tiny_disk',
        paired_dataset_options('train', tiny_pairs['train_gt'], tiny_pairs['train_lq'], 'train'),
        paired_dataset_options('val', tiny_pairs['val_gt'], tiny_pairs['val_lq'], 'val'))
    result = run_module('lksmn_arch.cli.train', '-opt', str(write_yaml(workdir / 'train.yml', opt)), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, opt


def test_disk_training_writes_checkpoints_and_logs_validation_psnr(trained_run):
    workdir, _ = trained_run
    experiment = workdir / 'experiments' / 'tiny_disk'
    assert {'net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth'} <= {p.name for p in (experiment / 'models').iterdir()}
    assert (experiment / 'training_states' / '4.state').is_file()
    psnrs = [float(v) for v in PSNR_LINE.findall(_log_text(experiment, 'train'))]
    assert len(psnrs) >= 2 and all(10 < v < 60 for v in psnrs)
    weights = torch.load(experiment / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    assert 'conv_first.weight' in weights


def test_test_pipeline_reproduces_the_validation_psnr(trained_run, tiny_pairs):
    workdir, train_opt = trained_run
    final_val_psnr = float(PSNR_LINE.findall(_log_text(workdir / 'experiments' / 'tiny_disk', 'train'))[-1])
    test_opt = {
        'name': 'tiny_test', 'model_type': 'LKSMNModel', 'scale': 2, 'num_gpu': 'auto',
        'datasets': {'test_1': paired_dataset_options('val', tiny_pairs['val_gt'], tiny_pairs['val_lq'], 'val')},
        'network_g': train_opt['network_g'],
        'path': {'pretrain_network_g': 'experiments/tiny_disk/models/net_g_latest.pth', 'param_key_g': 'params',
                 'strict_load_g': True},
        'val': {'save_img': True, 'suffix': None, 'metrics': train_opt['val']['metrics']},
    }
    result = run_module('lksmn_arch.cli.test', '-opt', str(write_yaml(workdir / 'test.yml', test_opt)), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    results = workdir / 'results' / 'tiny_test'
    test_psnr = float(PSNR_LINE.findall(_log_text(results, 'test'))[-1])
    assert test_psnr == pytest.approx(final_val_psnr, abs=1e-4)
    assert len(list((results / 'visualization' / 'val').glob('*.png'))) == 2


def test_lmdb_training_runs_from_prepared_lmdbs(tiny_pairs, tmp_path):
    gt = _make_lmdb(tiny_pairs['train_gt'], tmp_path / 'gt.lmdb')
    lq = _make_lmdb(tiny_pairs['train_lq'], tmp_path / 'lq.lmdb')
    opt = training_options('tiny_lmdb', paired_dataset_options('train', gt, lq, 'train', backend='lmdb'),
                           paired_dataset_options('val', gt, lq, 'val', backend='lmdb'), total_iter=2)
    result = run_module('lksmn_arch.cli.train', '-opt', str(write_yaml(tmp_path / 'train.yml', opt)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / 'experiments' / 'tiny_lmdb'
    assert (experiment / 'models' / 'net_g_2.pth').is_file()
    assert PSNR_LINE.search(_log_text(experiment, 'train'))


def test_auto_resume_continues_from_the_saved_iteration_to_total_iter(trained_run, tmp_path):
    workdir, opt = trained_run
    shutil.copytree(workdir / 'experiments', tmp_path / 'experiments')
    opt = dict(opt, train=dict(opt['train'], total_iter=6))
    option_file = write_yaml(tmp_path / 'train.yml', opt)
    result = run_module('lksmn_arch.cli.train', '-opt', str(option_file), '--auto_resume', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / 'experiments' / 'tiny_disk'
    log = _log_text(experiment, 'train')
    assert 'Resuming training from epoch' in log and 'iter: 4' in log
    assert (experiment / 'models' / 'net_g_6.pth').is_file()
    state = torch.load(experiment / 'training_states' / '6.state', weights_only=True)
    assert state['iter'] == 6
    assert not list(tmp_path.glob('experiments/tiny_disk_archived_*')), 'resume must not archive the run'


def test_two_process_gloo_training_completes_with_rank_zero_writing(tiny_pairs, tmp_path):
    opt = training_options(
        'tiny_ddp', paired_dataset_options('train', tiny_pairs['train_gt'], tiny_pairs['train_lq'], 'train'),
        paired_dataset_options('val', tiny_pairs['val_gt'], tiny_pairs['val_lq'], 'val'), total_iter=2)
    opt['dist_params'] = {'backend': 'gloo', 'port': 29500}
    option_file = write_yaml(tmp_path / 'train.yml', opt)
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}', '-m',
         'lksmn_arch.cli.train', '-opt', str(option_file), '--launcher', 'pytorch'],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / 'experiments' / 'tiny_ddp'
    assert (experiment / 'models' / 'net_g_2.pth').is_file()
    assert len(list(experiment.glob('train_*.log'))) == 1
    log = _log_text(experiment, 'train')
    assert 'World size (gpu number): 2' in log and PSNR_LINE.search(log)


@pytest.mark.parametrize('option_file', sorted((REPO / 'options').glob('*.yml')), ids=lambda p: p.name)
def test_each_shipped_option_file_parses_and_builds_its_network(option_file):
    from basicsr.archs import build_network

    from lksmn_arch.training.pipeline import load_options
    opt = load_options(str(option_file))
    net = build_network(opt['network_g'])
    assert net.upscale == opt['scale']
    lr = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        assert net(lr).shape == (1, 3, 9 * opt['scale'], 7 * opt['scale'])
    assert opt['num_gpu'] == 'auto'
    if opt['name'].endswith('benchmarks'):
        assert [d['name'] for _, d in sorted(opt['datasets'].items())] == ['Set5', 'Set14', 'B100', 'Urban100',
                                                                           'Manga109']
        assert opt['path']['param_key_g'] == 'params_ema'
        assert all(m['crop_border'] == opt['scale'] and m['test_y_channel'] for m in opt['val']['metrics'].values())


def test_train_option_file_runs_a_few_iterations_on_a_small_prepared_dataset(tiny_pairs, tmp_path):
    """options/train_LKSMN_x4.yml as shipped, with its dataroots pointed at small x4 LMDBs."""
    from conftest import photo_crops, write_pairs
    pairs = write_pairs(tmp_path / 'data', photo_crops(4, 64, seed=3), scale=4)
    gt = _make_lmdb(pairs['gt'], tmp_path / 'datasets' / 'DF2K' / 'DF2K_train_HR_sub.lmdb')
    lq = _make_lmdb(pairs['lq'], tmp_path / 'datasets' / 'DF2K' / 'DF2K_train_LR_bicubic_X4_sub.lmdb')
    shutil.copytree(pairs['gt'], tmp_path / 'datasets' / 'Set5' / 'GTmod4')
    shutil.copytree(pairs['lq'], tmp_path / 'datasets' / 'Set5' / 'LRbicx4')
    result = run_module(
        'lksmn_arch.cli.train', '-opt', str(REPO / 'options' / 'train_LKSMN_x4.yml'), '--force_yml',
        'train:total_iter=2', 'logger:save_checkpoint_freq=2', 'val:val_freq=2', 'logger:use_tb_logger=false',
        'datasets:train:batch_size_per_gpu=2', 'datasets:train:gt_size=64', 'datasets:train:num_worker_per_gpu=0',
        cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert gt.is_dir() and lq.is_dir()
    assert (tmp_path / 'experiments' / 'LKSMN_x4_DF2K' / 'models' / 'net_g_2.pth').is_file()


@pytest.fixture(scope='module')
def x4_checkpoint(tmp_path_factory):
    """A default-size LKSMN x4 checkpoint (random weights) saved as BasicSR saves an EMA run."""
    from lksmn_arch import LKSMN
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('x4') / 'net_g_latest.pth'
    weights = LKSMN(upscale=4).state_dict()
    torch.save({'params': weights, 'params_ema': weights}, path)
    return path


def test_benchmark_option_file_runs_all_five_sets_in_order(x4_checkpoint, tmp_path):
    from conftest import photo_crops, write_pairs
    pairs = write_pairs(tmp_path / 'data', photo_crops(1, 32, seed=5), scale=4)
    overrides = [f'path:pretrain_network_g={x4_checkpoint}']
    for index in range(1, 6):
        overrides += [f'datasets:test_{index}:dataroot_gt={pairs["gt"]}',
                      f'datasets:test_{index}:dataroot_lq={pairs["lq"]}']
    result = run_module('lksmn_arch.cli.test', '-opt', str(REPO / 'options' / 'test_LKSMN_x4.yml'), '--force_yml',
                        *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = _log_text(tmp_path / 'results' / 'LKSMN_x4_benchmarks', 'test')
    assert re.findall(r'Testing (\w+)\.\.\.', log) == ['Set5', 'Set14', 'B100', 'Urban100', 'Manga109']
    assert 'with param key: [params_ema]' in log
    assert len(PSNR_LINE.findall(log)) == 5


def test_single_image_option_file_upscales_lr_images_without_ground_truth(x4_checkpoint, tmp_path):
    from conftest import photo_crops
    import cv2
    lr_dir = tmp_path / 'lr'
    lr_dir.mkdir()
    for index, crop in enumerate(photo_crops(2, 12, seed=7)):
        cv2.imwrite(str(lr_dir / f'img{index}.png'), crop)
    result = run_module('lksmn_arch.cli.test', '-opt', str(REPO / 'options' / 'test_LKSMN_x4_single.yml'),
                        '--force_yml', f'datasets:test_1:dataroot_lq={lr_dir}',
                        f'path:pretrain_network_g={x4_checkpoint}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = sorted((tmp_path / 'results' / 'LKSMN_x4_single' / 'visualization' / 'single').glob('*.png'))
    assert [p.name for p in outputs] == ['img0_LKSMN_x4_single.png', 'img1_LKSMN_x4_single.png']
    assert cv2.imread(str(outputs[0])).shape == (48, 48, 3)


@pytest.mark.parametrize('is_train', [True, False], ids=['lksmn-train', 'lksmn-test'])
def test_model_types_other_than_lksmnmodel_run_as_lksmnmodel_or_with_a_warning(is_train):
    from lksmn_arch.training.pipeline import model_type_plan
    assert model_type_plan({'model_type': 'LKSMNModel'}, 'a.yml', is_train) == (None, None)
    run_as, (level, message) = model_type_plan({'model_type': 'SRModel'}, 'a.yml', is_train)
    assert run_as == 'model_type=LKSMNModel' and level == logging.INFO
    assert message.startswith('a.yml: model_type SRModel runs as LKSMNModel (SRModel with the same option keys, plus ')
    run_as, (level, message) = model_type_plan({'model_type': 'SwinIRModel'}, 'a.yml', is_train)
    assert run_as is None and level == logging.WARNING
    assert message.startswith('a.yml: model_type SwinIRModel runs as written, without these guarantees (they hold '
                              'for LKSMNModel and SRModel only): ')
    assert ('atomic checkpoint saves' in message) is is_train
    assert 'weights-only loading with a one-line refusal of pickled code' in message


def test_training_log_names_frozen_parameters_but_not_lksmn_batchnorm_statistics(trained_run, monkeypatch):
    """LKSMN keeps BatchNorm statistics as frozen parameters on purpose: no warning for them; a parameter a
    user froze is still named."""
    workdir, _ = trained_run
    assert 'will not be optimized' not in _log_text(workdir / 'experiments' / 'tiny_disk', 'train')
    from basicsr.utils import get_root_logger
    from lksmn_arch.models.lksmn_model import LKSMNModel
    from lksmn_arch import LKSMN
    from conftest import TINY_NETWORK
    warnings = []
    monkeypatch.setattr(get_root_logger(), 'warning', warnings.append)
    model = LKSMNModel.__new__(LKSMNModel)
    network = LKSMN(**{k: v for k, v in TINY_NETWORK.items() if k != 'type'})
    network.conv_first.weight.requires_grad_(False)
    model.net_g, model.optimizers = network, []
    model.opt = {'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}}}
    model.setup_optimizers()
    assert warnings == ['Params conv_first.weight will not be optimized.']
    optimized = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert id(network.conv_first.weight) not in optimized
    assert all(id(p) not in optimized for name, p in network.named_parameters() if 'running_' in name)
    assert len(optimized) == sum(p.requires_grad for p in network.parameters())


def test_fine_tuning_another_scale_starts_the_ema_network_from_net_g_where_the_checkpoint_has_no_weights(tmp_path):
    """An x4 checkpoint loaded non-strictly at x2 leaves the upsampler out: the EMA network must start with
    net_g's upsampler (not an unrelated random one, which made validation score below bicubic), and with the
    checkpoint's body like net_g."""
    import lksmn_arch  # noqa: F401
    from basicsr.models import build_model
    from lksmn_arch import LKSMN
    from conftest import TINY_NETWORK
    network = {k: v for k, v in TINY_NETWORK.items() if k != 'type'}
    x4 = LKSMN(**{**network, 'upscale': 4})
    torch.save({'params_ema': x4.state_dict()}, tmp_path / 'x4.pth')
    opt = training_options('finetune', {}, None, ema_decay=0.999)
    opt['datasets'] = {}
    opt['path'].update(pretrain_network_g=str(tmp_path / 'x4.pth'), param_key_g='params_ema', strict_load_g=False,
                       models=str(tmp_path / 'models'), training_states=str(tmp_path / 'states'))
    opt.update(is_train=True, dist=False, rank=0, world_size=1, num_gpu=0)
    for folder in ('models', 'states'):
        (tmp_path / folder).mkdir()
    model = build_model(opt)
    try:
        net_g, ema = model.net_g.state_dict(), model.net_g_ema.state_dict()
        for key, value in x4.state_dict().items():
            if key.startswith('upsampler.'):
                assert torch.equal(ema[key], net_g[key]), key
            else:
                assert torch.equal(ema[key], value) and torch.equal(net_g[key], value), key
    finally:
        from lksmn_arch.models.lksmn_model import uninstall_signal_handlers
        uninstall_signal_handlers()
