"""The training path (train.precision, train.channels_last): chosen per device, checked, and never silently slower."""
import sys
from pathlib import Path

import pytest
import torch

from lksmn_arch.errors import TrainingError
from lksmn_arch.models import training_path as paths
from lksmn_arch.models.training_path import training_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))


def test_auto_path_on_a_cpu_is_channels_last_with_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: False)
    assert training_path({}, 'cpu')[:3] == (True, None, False)
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: True)
    assert training_path({}, 'cpu')[:3] == (True, torch.bfloat16, True)  # untimed: LKCD's depthwise convs in fp32


def _fake_timer(ms: dict, calls: list):
    def time_step(dtype, lkcd_fp32):
        name = 'fp32' if dtype is None else ('bf16 lkcd' if lkcd_fp32 else 'bf16')
        calls.append(name)
        return ms[name] / 1000
    return time_step


@pytest.mark.parametrize('fp32_ms, bf16_ms, lkcd_ms, chosen', [
    (60.0, 50.0, 55.0, (torch.bfloat16, False)),  # plain bf16 clearly faster
    (40.9, 42.0, 34.6, (torch.bfloat16, True)),  # an AMX Xeon, measured: bf16 only with LKCD's depthwise in fp32
    (43.2, 46.4, 45.0, (None, False)),  # both bf16 paths slower
    (50.0, 49.0, 48.5, (None, False))])  # within the margin: fp32's accuracy
def test_auto_path_on_a_native_bf16_cpu_is_the_one_its_own_timed_steps_say_is_faster(monkeypatch, fp32_ms, bf16_ms,
                                                                                     lkcd_ms, chosen):
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: True)
    calls = []
    path = training_path({}, 'cpu', _fake_timer({'fp32': fp32_ms, 'bf16': bf16_ms, 'bf16 lkcd': lkcd_ms}, calls))
    assert (path.channels_last, path.autocast_dtype, path.lkcd_depthwise_fp32) == (True, *chosen)
    assert calls == ['fp32', 'bf16', 'bf16 lkcd'] * (1 + paths.TIMING_ROUNDS)  # a warm-up round, then interleaved
    assert (f'{bf16_ms:.1f} ms in bf16 autocast,' in path.lines[0] and f'{fp32_ms:.1f} ms in fp32' in path.lines[0]
            and f"{lkcd_ms:.1f} ms in bf16 autocast with LKCD's depthwise convs in fp32" in path.lines[0])
    taken = {(torch.bfloat16, False): 'bf16 autocast,', (torch.bfloat16, True): "bf16 autocast with LKCD's",
             (None, False): 'fp32,'}[chosen]
    assert path.lines[-1].startswith(f'Training path: {taken}')


@pytest.mark.parametrize('train, native', [({'precision': 'fp32'}, True),
                                           ({'precision': 'bf16', 'lkcd_depthwise_fp32': True}, True),
                                           ({'precision': 'bf16', 'lkcd_depthwise_fp32': False}, True),
                                           ({}, False)])
def test_the_path_is_not_timed_where_the_options_pin_it_or_the_cpu_has_no_native_bf16(monkeypatch, train, native):
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: native)
    calls = []
    path = training_path(train, 'cpu', _fake_timer({'fp32': 1.0, 'bf16': 1.0, 'bf16 lkcd': 1.0}, calls))
    assert calls == [] and not paths.path_is_timed(train, 'cpu')
    bf16 = path.autocast_dtype is not None
    assert path.lkcd_depthwise_fp32 == (native and bf16 and train.get('lkcd_depthwise_fp32', True))


def test_bf16_pinned_times_only_whether_lkcd_depthwise_convs_stay_fp32(monkeypatch):
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: True)
    calls = []
    path = training_path({'precision': 'bf16'}, 'cpu', _fake_timer({'fp32': 1.0, 'bf16': 40.0, 'bf16 lkcd': 45.0}, calls))
    assert set(calls) == {'bf16', 'bf16 lkcd'} and path[1:3] == (torch.bfloat16, False)
    assert 'set train.lkcd_depthwise_fp32 to pin it' in path.lines[0]


def test_a_network_without_lkcd_times_fp32_against_plain_bf16_only(monkeypatch):
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: True)
    calls = []
    path = training_path({}, 'cpu', _fake_timer({'fp32': 60.0, 'bf16': 50.0, 'bf16 lkcd': 1.0}, calls),
                         network_has_lkcd=False)
    assert set(calls) == {'fp32', 'bf16'} and path[1:3] == (torch.bfloat16, False)
    assert 'LKCD' not in path.lines[-1].split('(')[0]
    assert not paths.path_is_timed({'precision': 'bf16'}, 'cpu', network_has_lkcd=False)


def test_unknown_lkcd_depthwise_fp32_values_are_refused_naming_the_key():
    with pytest.raises(TrainingError, match='train.lkcd_depthwise_fp32'):
        training_path({'lkcd_depthwise_fp32': 'yes'}, 'cpu')


def test_a_training_model_times_its_own_network_at_its_batch_shape(monkeypatch, tmp_path):
    from train_speed import build
    from lksmn_arch.models import lksmn_model
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: True)
    shapes = []
    real_timer = paths.network_step_timer

    def recording_timer(net, batch_size, lr_patch, scale, channels_last, device):
        shapes.append((type(net).__name__, batch_size, lr_patch, scale, channels_last))
        timer = real_timer(net, batch_size, lr_patch, scale, channels_last, device, steps=1)
        # bf16 with LKCD's depthwise convs in fp32 made to win
        return lambda dtype, lkcd: timer(dtype, lkcd) * (0.25 if dtype == torch.bfloat16 and lkcd else 1.0)

    monkeypatch.setattr(lksmn_model, 'network_step_timer', recording_timer)
    model = build('LKSMN', {'precision': 'auto', 'channels_last': True}, 2, tmp_path, 'cpu')
    assert shapes == [('LKSMN', 8, 16, 2, True)]  # no datasets.train in these options: batch 8 of 16x16
    assert model._autocast_dtype == torch.bfloat16
    lkcds = [m for m in model.net_g.modules() if type(m).__name__ == 'LKCD']
    assert lkcds and all(m.depthwise_fp32_under_autocast for m in lkcds)  # set on the network that trains


def test_the_step_timer_leaves_the_network_and_the_random_stream_as_they_were():
    from lksmn_arch.archs.lksmn_arch import LKSMN
    net = LKSMN(upscale=2)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    before = torch.random.get_rng_state()
    timer = paths.network_step_timer(net, 2, 8, 2, True, torch.device('cpu'), steps=1)
    assert timer(None, False) > 0 and timer(torch.bfloat16, False) > 0 and timer(torch.bfloat16, True) > 0
    assert not any(getattr(m, 'depthwise_fp32_under_autocast', False) for m in net.modules())
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_bf16_asked_on_a_cpu_without_native_bf16_falls_back_to_fp32_with_one_line(monkeypatch):
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: False)
    channels_last, dtype, lkcd_fp32, lines = training_path({'precision': 'bf16', 'channels_last': False}, 'cpu')
    assert (channels_last, dtype, lkcd_fp32) == (False, None, False)
    assert any('no native bf16' in line and 'fp32' in line for line in lines)
    assert lines[-1].startswith('Training path: fp32, NCHW on cpu')


@pytest.mark.parametrize('train, key', [({'precision': 'fp8'}, 'train.precision'),
                                        ({'channels_last': 'yes'}, 'train.channels_last')])
def test_unknown_path_values_are_refused_naming_the_key(train, key):
    with pytest.raises(TrainingError, match=key):
        training_path(train, 'cpu')


def test_a_channels_last_training_step_saves_contiguous_fp32_weights(tmp_path):
    from train_speed import build, random_batches, step
    model = build('LKSMN', {'precision': 'fp32', 'channels_last': True}, 2, tmp_path, 'cpu')
    assert model.net_g.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    batch = random_batches(1, 2, 8, 2)[0]
    step(model, batch, 1)
    assert model.lq.is_contiguous(memory_format=torch.channels_last)
    changed = [k for k, v in model.net_g.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, 'the step changed no weight'
    model.save_network(model.net_g, 'net_g', 1)
    saved = torch.load(tmp_path / 'models' / 'net_g_1.pth', weights_only=True)['params']
    assert all(t.is_contiguous() and t.dtype == torch.float32 for t in saved.values() if t.is_floating_point())


def _fp16_model(tmp_path, init_scale: float):
    """A training LKSMNModel on the fp16 path with a loss scaler, on the CPU (where training_path itself would
    choose fp32: CUDA is where fp16 runs, but the scaler's logic is the same)."""
    from train_speed import build
    model = build('LKSMN', {'precision': 'fp32', 'channels_last': False}, 2, tmp_path, 'cpu')
    model._autocast_dtype = torch.float16
    model._grad_scaler = torch.amp.GradScaler('cpu', init_scale=init_scale)
    return model


def test_fp16_gradients_that_overflow_the_loss_scale_lower_it_and_leave_the_network_as_it_was_without_counting_a_fault(tmp_path):
    from train_speed import random_batches, step
    model = _fp16_model(tmp_path, init_scale=2.0 ** 60)  # the scaled gradients overflow fp16
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    step(model, random_batches(1, 2, 8, 2)[0], 1)
    assert model._grad_scaler.get_scale() < 2.0 ** 60
    assert model._nonfinite_steps == 0  # the scaler's skip is not a non-finite fault
    assert all(torch.equal(v, before[k]) for k, v in model.net_g.state_dict().items())


def test_fp16_training_with_a_sane_loss_scale_steps_the_fp32_weights(tmp_path):
    from train_speed import random_batches, step
    model = _fp16_model(tmp_path, init_scale=2.0 ** 10)
    before = {k: v.clone() for k, v in model.net_g.named_parameters()}
    step(model, random_batches(1, 2, 8, 2)[0], 1)
    assert model._grad_scaler.get_scale() == 2.0 ** 10
    changed = [k for k, v in model.net_g.named_parameters() if not torch.equal(v, before[k])]
    assert changed and all(v.dtype == torch.float32 for v in model.net_g.parameters())


def test_the_fp16_loss_scale_is_saved_in_the_training_state_and_restored_on_resume(tmp_path):
    from train_speed import random_batches, step
    model = _fp16_model(tmp_path / 'run', init_scale=2.0 ** 60)
    step(model, random_batches(1, 2, 8, 2)[0], 1)  # overflows: the scale comes down
    lowered = model._grad_scaler.get_scale()
    model.save_training_state(0, 1)
    state = torch.load(tmp_path / 'run' / 'states' / '1.state', weights_only=True)  # as the resume loader reads it
    assert state['grad_scaler']['scale'] == lowered < 2.0 ** 60
    resumed = _fp16_model(tmp_path / 'resumed', init_scale=2.0 ** 16)
    resumed.resume_training(state)
    assert resumed._grad_scaler.get_scale() == lowered


def test_the_speed_table_marks_as_default_the_path_a_run_would_time_as_faster(monkeypatch):
    import train_speed
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: True)
    shape = {'network': 'LKSMN', 'threads': 2, 'batch': 8}
    rows = [{**shape, 'lr_patch': patch, 'loader': loader, 'path': path, 'ms_per_iter': ms}
            for patch, fp32, bf16, lkcd in ((16, 43.2, 46.4, 45.0), (32, 178.0, 159.0, 165.0), (48, 300.0, 310.0, 200.0))
            for loader in ('random tensors', 'LMDB dataloader')
            for path, ms in (('fp32 NCHW', 400.0), ('fp32 channels_last', fp32), ('bf16 channels_last', bf16),
                             (train_speed.LKCD_FP32_PATH, lkcd))]
    train_speed.mark_default_paths(rows, 'cpu')
    defaults = {(r['lr_patch'], r['loader']): r['path'] for r in rows if r['default']}
    assert defaults == {(16, 'random tensors'): 'fp32 channels_last', (16, 'LMDB dataloader'): 'fp32 channels_last',
                        (32, 'random tensors'): 'bf16 channels_last', (32, 'LMDB dataloader'): 'bf16 channels_last',
                        (48, 'random tensors'): train_speed.LKCD_FP32_PATH,
                        (48, 'LMDB dataloader'): train_speed.LKCD_FP32_PATH}
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: False)
    train_speed.mark_default_paths(rows, 'cpu')
    assert {r['path'] for r in rows if r['default']} == {'fp32 channels_last'}


def test_the_speed_benchmark_counts_and_reports_timed_steps_skipped_as_non_finite(tmp_path):
    import train_speed
    model = train_speed.build('LKSMN', {'precision': 'fp32', 'channels_last': False}, 2, tmp_path, 'cpu')
    batch = train_speed.random_batches(1, 2, 8, 2)[0]
    batch['lq'][0, 0, 0, 0] = float('nan')
    configs = {'LKSMN|fp32 NCHW': {'model': model, 'batches': train_speed.cycle([batch], 'cpu')}}
    train_speed.time_configs(configs, rounds=1, iters=2, warmup=1)
    assert configs['LKSMN|fp32 NCHW']['skipped'] == 2 and model.skipped_steps == 3  # the warm-up step not counted
    row = {'network': 'LKSMN', 'path': 'fp32 NCHW', 'threads': 1, 'batch': 2, 'lr_patch': 8, 'loader': 'random tensors',
           'ms_per_iter': 10.0, 'iters_per_s': 100.0, 'skipped_steps': 2}
    table = train_speed.format_table({'device': 'cpu', 'cpu': 'a CPU', 'native_bf16': False, 'torch': '2', 'scale': 2,
                                      'rounds': 1, 'iters': 2, 'command': 'x', 'rows': [row]})
    assert 'skipped as non-finite' in table and 'patch 8, random tensors: 2 of 2' in table


def _choose_in_rank(rank: int, init_file: str, results: str) -> None:
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    mine = (torch.bfloat16, True) if rank == 0 else (None, False)  # the ranks' own timings disagree
    dtype, lkcd = paths.rank_zeros_choice(mine)
    Path(results, f'rank{rank}.txt').write_text(f'{dtype} {lkcd}')
    dist.destroy_process_group()


def test_every_rank_of_a_distributed_run_trains_on_rank_zeros_timed_choice(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_choose_in_rank, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=2, join=True)
    assert {(tmp_path / f'rank{r}.txt').read_text() for r in (0, 1)} == {'torch.bfloat16 True'}
    assert paths.rank_zeros_choice((None, False)) == (None, False)  # not distributed: as it is


def test_timings_that_spread_like_a_busy_machines_are_retried_then_give_way_to_the_untimed_default(monkeypatch):
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: True)
    calls = []
    # fp32 "fastest" on every call, but each candidate's rounds differ 2x: what other processes on the cores do
    noisy = iter([1.0, 2.0, 2.0] + [1.0, 2.0, 2.0, 2.0, 4.0, 4.0] * 100)

    def time_step(dtype, lkcd_fp32):
        calls.append((dtype, lkcd_fp32))
        return next(noisy) / 1000 * (1 if dtype is None else 1.5)

    path = training_path({}, 'cpu', time_step)
    assert len(calls) == paths.TIMING_ATTEMPTS * 3 * (1 + paths.TIMING_ROUNDS)
    assert path[1:3] == (torch.bfloat16, True)  # the untimed default, not the noise's pick
    assert path.lines[0].startswith('Training path not timed: a training step varied by more than 25%')
    assert 'set train.precision and train.lkcd_depthwise_fp32 to pin it' in path.lines[0]


def test_a_steady_timing_is_taken_at_each_candidates_fastest_round(monkeypatch):
    monkeypatch.setattr(paths, 'cpu_has_native_bf16', lambda: True)
    rounds = {(None, False): iter([9, 40, 42, 41]), (torch.bfloat16, False): iter([9, 44, 45, 46]),
              (torch.bfloat16, True): iter([9, 36, 35, 38])}  # warm-up, then three rounds within 25%
    path = training_path({}, 'cpu', lambda dtype, lkcd: next(rounds[(dtype, lkcd)]) / 1000)
    assert path[1:3] == (torch.bfloat16, True)
    assert '40.0 ms in fp32, 44.0 ms in bf16 autocast, 35.0 ms in bf16 autocast with' in path.lines[0]
