"""benchmarks/equal_budget.py: bad input stops before training, a tiny study end to end, reuse, option files."""
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import lksmn_arch  # noqa: F401  (compat fixes before basicsr)
from basicsr.archs import build_network
from basicsr.utils.matlab_functions import imresize

from lksmn_arch.archs.lksmn_arch import LKSMN, NAMED_CONFIGS
from lksmn_arch.archs.complexity import count_parameters

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'benchmarks' / 'equal_budget.py'
TINY = 'tiny=LKSMN:{"num_feat": 12, "num_block": 1, "lkcd_kernels": [[9, 2], [21, 3]], "num_heads": 2}'
TINY_NOMDTA = 'tinynomdta=tiny:{"mdta": false}'


def _load_harness() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location('equal_budget', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules['equal_budget'] = module
    spec.loader.exec_module(module)
    return module


eb = _load_harness()
HAVE_SPANDREL = importlib.util.find_spec('spandrel') is not None


def _photos(folder: Path, name: str, boxes, size) -> Path:
    """Crops of one of scikit-image's photos, as PNG HR images."""
    from skimage import data
    image = np.ascontiguousarray(getattr(data, name)()[..., ::-1])
    folder.mkdir(parents=True)
    for index, (y, x) in enumerate(boxes):
        cv2.imwrite(str(folder / f'{name}{index}.png'), image[y:y + size[0], x:x + size[1]])
    return folder


@pytest.fixture(scope='module')
def tiny_hr(tmp_path_factory):
    """4 training HR images (astronaut crops) and 2 held-out ones (coffee crops)."""
    root = tmp_path_factory.mktemp('eb_hr')
    train = _photos(root / 'train', 'astronaut', [(0, 0), (100, 200), (300, 100), (200, 300)], (64, 64))
    test = _photos(root / 'test', 'coffee', [(0, 0), (100, 200)], (48, 64))
    return {'train': train, 'test': test}


@pytest.fixture
def one_thread():
    """Tiny networks train fastest on one thread (and a busy 2-core machine does not make threads wait)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any training or testing starts."""
    def refuse(*args, **kwargs):
        raise AssertionError('training started')
    monkeypatch.setattr(eb, 'run_training', refuse)
    monkeypatch.setattr(eb, 'run_testing', refuse)


def _tiny_args(hr, out, *extra):
    return ['--iters', '20', '--seeds', '0', '--scale', '2', '--batch', '2', '--crop', '32', '--step', '32',
            '--workers', '1', '--train-hr', str(hr['train']), '--test-hr', str(hr['test']), '--out', str(out), *extra]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# --- bad input: one line, exit status 2, nothing trained ---------------------------------------------------

@pytest.mark.parametrize('spec, expected', [
    ('nosuch', "unknown network 'nosuch'"),
    ('bad=LKSMN:{"nosuch_kwarg": 1}', "network 'bad'"),
    ('bad=LKSMN:{"norm": "groupnorm"}', 'norm must be one of'),
    ('bad=LKSMN:{"num_feat": 50}', 'num_feat (50) must be divisible'),
    ('bad=LKSMN:{"mdta": fals}', 'is not valid JSON'),
    ('bad=LKSMN:[1, 2]', 'must be a JSON object'),
    ('bad=LKSMN:{"upscale": 2}', 'do not set upscale'),
    ('v1=LKSMN:{}', 'is a built-in entry'),
    ('bad=nosuchbase:{}', "unknown base 'nosuchbase'"),
])
def test_bad_network_is_one_line_exit_2_before_anything(tmp_path, capsys, no_training, spec, expected):
    assert eb.main(['--nets', 'v1', spec, '--out', str(tmp_path / 'out')]) == 2
    err = _error(capsys)
    assert expected in err
    if 'nosuch_kwarg' in spec:
        assert 'nosuch_kwarg' in err
    assert not (tmp_path / 'out').exists()


def test_timing_rounds_below_one_are_refused_before_anything(tmp_path, capsys, no_training):
    assert eb.main(['--nets', 'v1', '--timing-rounds', '0', '--out', str(tmp_path / 'out')]) == 2
    assert '--timing-rounds must be positive, got 0' in _error(capsys)
    assert not (tmp_path / 'out').exists()


def test_a_network_listed_twice_is_refused(tmp_path, capsys, no_training):
    assert eb.main(['--nets', 'v1', 'nomdta', 'v1', '--out', str(tmp_path / 'out')]) == 2
    assert "'v1' is listed twice" in _error(capsys)


def test_empty_data_folder_is_refused_before_training(tmp_path, capsys, no_training, tiny_hr):
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / '.hidden.png').write_bytes(b'')
    assert eb.main(['--nets', TINY, '--train-hr', str(empty), '--out', str(tmp_path / 'out')]) == 2
    err = _error(capsys)
    assert '--train-hr' in err and str(empty) in err and 'holds no images' in err
    assert eb.main(_tiny_args({'train': tiny_hr['train'], 'test': empty}, tmp_path / 'out', '--nets', TINY)) == 2
    assert '--test-hr' in _error(capsys)
    assert not (tmp_path / 'out').exists()


def _pairs(root: Path, count: int, scale: int = 2) -> dict:
    gt_dir, lq_dir = root / 'gt', root / 'lq'
    gt_dir.mkdir(parents=True)
    lq_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        gt = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        lq = np.clip(np.round(imresize(gt / 255.0, 1 / scale) * 255), 0, 255).astype(np.uint8)
        cv2.imwrite(str(gt_dir / f'{index}.png'), gt)
        cv2.imwrite(str(lq_dir / f'{index}.png'), lq)
    return {'gt': gt_dir, 'lq': lq_dir}


def test_gt_lq_folders_that_do_not_pair_are_refused_before_training(tmp_path, capsys, no_training):
    train, test = _pairs(tmp_path / 'train', 3), _pairs(tmp_path / 'test', 2)
    (train['lq'] / '2.png').rename(train['lq'] / 'other.png')
    common = ['--nets', TINY, '--scale', '2', '--out', str(tmp_path / 'out'), '--test-gt', str(test['gt']),
              '--test-lq', str(test['lq'])]
    assert eb.main([*common, '--train-gt', str(train['gt']), '--train-lq', str(train['lq'])]) == 2
    err = _error(capsys)
    assert 'no LQ partner' in err and '2.png' in err
    # a GT that is not scale x its LQ
    assert eb.main([*common, '--train-gt', str(test['gt']), '--train-lq', str(test['gt'])]) == 2
    assert 'must be exactly 2 times the LQ' in _error(capsys)
    assert eb.main([*common, '--train-gt', str(train['gt'])]) == 2
    assert '--train-gt and --train-lq go together' in _error(capsys)
    assert not (tmp_path / 'out' / 'runs').exists()


def test_the_script_runs_from_anywhere_and_exits_2_on_a_bad_network(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), '--nets', 'nosuch', '--out', str(tmp_path / 'o')],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown network 'nosuch'" in result.stderr


def test_help_explains_defaults_outputs_resuming_and_timing(capsys):
    with pytest.raises(SystemExit) as stop:
        eb.main(['--help'])
    assert stop.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())
    for expected in ('default 2000', 'default 0 1', 'default 8', 'default 4', 'NAME=LKSMN:{json}', 'results.json',
                     'table.md', 'gain_vs_latency.png', 'is reused, not retrained', 'after ALL training',
                     '--no-timing', 'astronaut, coffee, chelsea', 'exit status'):
        assert expected in text, expected


# --- networks --------------------------------------------------------------------------------------------

def test_specs_extend_built_in_entries_and_scale_with_the_upscale():
    network = eb.parse_network('w42x4_nomdta=w42x4:{"mdta": false}')
    v2 = {key: [list(p) for p in value] if key == 'lkcd_kernels' else value for key, value in NAMED_CONFIGS['v2'].items()}
    assert network.kwargs == {**v2, 'num_feat': 42, 'num_block': 4, 'num_heads': 3, 'mdta': False}
    assert network.options(3) == {'type': 'LKSMN', 'upscale': 3, **network.kwargs}
    x4, x2 = eb.check_network(eb.parse_network('v1'), 4), eb.check_network(eb.parse_network('v1'), 2)
    assert x4['params'] == count_parameters(build_network({'type': 'LKSMN', 'upscale': 4, **NAMED_CONFIGS['v1']}))
    v2 = eb.check_network(eb.parse_network('v2'), 4)
    assert v2['params'] == count_parameters(build_network({'type': 'LKSMN', 'upscale': 4}))  # today's default
    assert x2['params'] < x4['params'] and x2['multi_adds'] > x4['multi_adds']


def test_ablations_that_change_a_form_keep_the_default_budget():
    default = eb.check_network(eb.parse_network('v2'), 4)['params']
    for name in ('ffn_gated', 'norm_layernorm', 'norm_none', 'w42x4', 'w57x2'):
        params = eb.check_network(eb.parse_network(name), 4)['params']
        assert abs(params - default) / default < 0.01, (name, params)
    single = eb.check_network(eb.parse_network('single_lkcd'), 4)['params']  # one 48x48 pointwise, not 3 of 16x16
    assert 0 < (single - default) / default < 0.031
    for name in ('nomdta', 'nomlfa', 'ffn_none'):  # removals, as in the paper's ablation table
        assert eb.check_network(eb.parse_network(name), 4)['params'] < default


@pytest.mark.skipif(not HAVE_SPANDREL, reason='spandrel (the bench extra) is not installed')
def test_peers_register_once_and_build_through_basicsr():
    assert eb.register_peers() and eb.register_peers()
    again = importlib.util.module_from_spec(importlib.util.spec_from_file_location('equal_budget_again', SCRIPT))
    again.__spec__.loader.exec_module(again)  # a second copy of the module (script and import) registers nothing new
    safmn = build_network({'type': 'SpandrelSAFMN', 'upscale': 4})
    assert 239_000 < count_parameters(safmn) < 241_000
    assert safmn(torch.rand(1, 3, 12, 16)).shape == (1, 3, 48, 64)
    assert eb.check_network(eb.parse_network('span'), 4)['params'] == 426_288  # SPAN's inference-time network


# --- ablation option files -----------------------------------------------------------------------------------

def test_ablation_option_files_are_up_to_date_and_build(one_thread):
    generated = eb.ablation_option_files()
    folder = REPO / 'options' / 'ablation'
    lksmn_entries = [name for name, entry in eb.NETWORKS.items() if entry.arch == 'LKSMN']
    assert sorted(generated) == sorted(f'train_LKSMN_x4_{name}.yml' for name in lksmn_entries)
    assert sorted(p.name for p in folder.iterdir()) == sorted(generated), \
        'regenerate them: python benchmarks/equal_budget.py --write-options options/ablation'
    template = yaml.safe_load((REPO / 'options' / 'train_LKSMN_x4.yml').read_text())
    for name in lksmn_entries:
        path = folder / f'train_LKSMN_x4_{name}.yml'
        assert path.read_text() == generated[path.name], \
            f'{path} is out of date: python benchmarks/equal_budget.py --write-options options/ablation'
        opt = yaml.safe_load(path.read_text())
        assert {k: v for k, v in opt.items() if k not in ('name', 'network_g')} == \
            {k: v for k, v in template.items() if k not in ('name', 'network_g')}
        assert opt['name'] == f'LKSMN_x4_{name}_DF2K'
        net = build_network(opt['network_g'])
        assert count_parameters(net) == eb.check_network(eb.parse_network(name), 4)['params']
        assert net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


# --- a tiny study, end to end, then reused ------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec('matplotlib') is None, reason='matplotlib (the bench extra) is missing')
def test_tiny_study_end_to_end_then_reused(tmp_path, capsys, monkeypatch, one_thread, tiny_hr):
    out = tmp_path / 'study'
    second = 'safmn' if HAVE_SPANDREL else TINY_NOMDTA
    second_name = second.split('=')[0]
    timed = []

    def fastest_latency(models, input_shape=(1, 3, 180, 320), threads=None, paths=None, rounds=5):
        # timing comes after all training: every run's score file exists already
        timed.append((sorted(models), tuple(input_shape), len(list(out.glob('runs/*/score.json'))), rounds))
        assert {'onnxruntime', 'openvino', 'channels_last'} <= set(paths['tiny'])  # LKSMN: the runtimes too
        assert 'onnxruntime' not in paths[second_name] or second_name.startswith('tiny')
        assert all(not m.training and next(m.parameters()).dtype == torch.float32 for m in models.values())
        return {name: ('eager' if name == 'tiny' else 'channels_last', 0.01 * (i + 1)) for i, name in enumerate(models)}

    monkeypatch.setitem(sys.modules, 'lksmn_arch.inference.latency', types.SimpleNamespace(fastest_latency=fastest_latency))
    assert eb.main(_tiny_args(tiny_hr, out, '--nets', TINY, second, '--timing-rounds', '3')) == 0
    printed = capsys.readouterr().out
    assert '[1/2] tiny seed 0: training 20 iters ...' in printed and f'[2/2] {second_name} seed 0: training' in printed
    assert timed == [(sorted(['tiny', second_name]), (1, 3, 360, 640), 2, 3)]  # once, after both runs

    results = json.loads((out / 'results.json').read_text())
    rows = {row['name']: row for row in results['networks']}
    assert list(rows) == ['tiny', second_name]
    tiny_params = count_parameters(LKSMN(upscale=2, num_feat=12, num_block=1, lkcd_kernels=[[9, 2], [21, 3]], num_heads=2))
    assert rows['tiny']['params'] == tiny_params and rows['tiny']['latency']['path'] == 'eager'
    assert [run['seed'] for run in rows['tiny']['runs']] == [0]
    assert len(results['bicubic']['per_image']) == 2 and 25 < results['bicubic']['psnr'] < 60
    for row in rows.values():
        run = row['runs'][0]
        assert row['psnr_gain']['mean'] == pytest.approx(run['psnr'] - results['bicubic']['psnr'])
    table = (out / 'table.md').read_text()
    assert '| tiny |' in table and f'| {second_name} |' in table and '| bicubic |' in table
    assert '10 | eager |' in table  # 0.01 s
    assert (out / 'gain_vs_latency.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    checkpoints = sorted(out.glob('runs/*/experiments/*/models/net_g_latest.pth'))
    assert len(checkpoints) == 2
    stamps = [p.stat().st_mtime_ns for p in checkpoints]

    # run again: nothing is retrained or retested; earlier latencies are shown with --no-timing
    real_run_testing = eb.run_testing

    def refuse(*args, **kwargs):
        raise AssertionError('a finished run was redone')
    monkeypatch.setattr(eb, 'run_training', refuse)
    monkeypatch.setattr(eb, 'run_testing', refuse)
    assert eb.main(_tiny_args(tiny_hr, out, '--nets', TINY, second, '--no-timing')) == 0
    printed = capsys.readouterr().out
    assert '[1/2] tiny seed 0: reused (finished earlier)' in printed
    assert f'[2/2] {second_name} seed 0: reused (finished earlier)' in printed
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    assert '10* | eager |' in (out / 'table.md').read_text()

    # other settings in the same folder are refused, naming the run and the setting
    assert eb.main(_tiny_args(tiny_hr, out, '--nets', TINY, '--iters', '30')) == 2
    err = _error(capsys)
    assert 'tiny_x2_s0 was trained with other settings' in err and 'total_iter was 20, now 30' in err

    # a run killed after training but before its score: only tested again, not retrained
    monkeypatch.setattr(eb, 'run_testing', real_run_testing)
    (out / 'runs' / 'tiny_x2_s0' / 'score.json').unlink()
    assert eb.main(_tiny_args(tiny_hr, out, '--nets', TINY, '--no-timing')) == 0
    assert '[1/1] tiny seed 0: trained earlier, testing ...' in capsys.readouterr().out
    assert (out / 'runs' / 'tiny_x2_s0' / 'score.json').is_file()
    assert [p.name for p in (out / 'runs' / 'tiny_x2_s0' / 'results').iterdir()] == ['tiny_x2_s0']  # none archived
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps


@pytest.mark.parametrize('name', [n for n, entry in eb.NETWORKS.items() if entry.arch == 'LKSMN'])
def test_every_study_network_round_trips_through_a_checkpoint_with_its_parameter_count(tmp_path, name):
    """Each LKSMN entry of the study: shapes, parameters (as the table reports them) and a checkpoint that
    lksmn-upscale / lksmn-export rebuild into the same network from tensor shapes alone."""
    from lksmn_arch.utils.checkpoint import build_model_from_checkpoint
    network = eb.parse_network(name)
    torch.manual_seed(0)
    model = build_network({'type': 'LKSMN', 'upscale': 4, **network.kwargs}).eval()
    assert count_parameters(model) == eb.check_network(network, 4)['params']
    torch.save({'params': model.state_dict()}, tmp_path / 'net.pth')
    rebuilt, config = build_model_from_checkpoint(tmp_path / 'net.pth')
    for key in ('num_feat', 'num_block', 'num_heads', 'norm', 'ffn', 'mdta', 'mlfa'):
        assert config[key] == network.kwargs[key], key
    assert [list(k) for k in config['lkcd_kernels']] == network.kwargs['lkcd_kernels']
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 3, 24, 20) and torch.equal(rebuilt(x), out)
