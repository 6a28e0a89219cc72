"""The complexity report: counting is right, and the command prints the budget."""
import pytest
import torch
from torch import nn

from lksmn_arch.archs import complexity
def test_multi_adds_of_a_convolution_match_the_textbook_formula():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert complexity.count_multi_adds(conv, (1, 3, 10, 12)) == 3 * 8 * 9 * 10 * 12


def test_input_size_for_a_720p_output():
    assert complexity.lr_size_for_output(4) == (180, 320)
    assert complexity.lr_size_for_output(2) == (360, 640)


def test_peak_memory_grows_with_the_activation_size():
    conv = nn.Conv2d(3, 64, 3, padding=1).eval()
    small = complexity.peak_forward_memory(conv, torch.rand(1, 3, 64, 64))
    large = complexity.peak_forward_memory(conv, torch.rand(1, 3, 512, 512))
    assert large is not None and small is not None
    assert large >= 64 * 512 * 512 * 4 * 0.9  # at least the output tensor
    assert large > small


def test_command_prints_parameters_and_multi_adds(capsys):
    assert complexity.main(['--scale', '4', '--no-memory']) == 0
    out = capsys.readouterr().out
    expected = complexity.count_parameters(complexity.LKSMN(upscale=4))
    assert f'{expected:,}' in out and 'Multi-Adds' in out and '320x180 input -> 1280x720 output' in out


def test_command_rejects_an_unsupported_scale(capsys):
    with pytest.raises(SystemExit):
        complexity.main(['--scale', '5'])
    assert 'invalid choice' in capsys.readouterr().err
