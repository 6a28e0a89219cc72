"""The training path (train.precision, train.channels_last): chosen per device, checked, and never silently slower."""
import sys
from pathlib import Path

import pytest
import torch

from lksmn_arch.errors import TrainingError
from lksmn_arch.models import lksmn_model
from lksmn_arch.models.lksmn_model import training_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))


def test_auto_path_on_a_cpu_is_channels_last_with_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(lksmn_model, 'cpu_has_native_bf16', lambda: False)
    assert training_path({}, 'cpu')[:2] == (True, None)
    monkeypatch.setattr(lksmn_model, 'cpu_has_native_bf16', lambda: True)
    assert training_path({}, 'cpu')[:2] == (True, torch.bfloat16)


def test_bf16_asked_on_a_cpu_without_native_bf16_falls_back_to_fp32_with_one_line(monkeypatch):
    monkeypatch.setattr(lksmn_model, 'cpu_has_native_bf16', lambda: False)
    channels_last, dtype, lines = training_path({'precision': 'bf16', 'channels_last': False}, 'cpu')
    assert (channels_last, dtype) == (False, None)
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

