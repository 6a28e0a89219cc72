"""Each compatibility fix restores the behaviour it exists for, and does nothing where nothing is broken."""
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest

import lksmn_arch
from lksmn_arch import compat


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)


def test_torchvision_imports_after_lksmn_arch():
    result = _run_python('import lksmn_arch, torchvision, torchvision.transforms.functional as F; print("ok")')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


def test_torchvision_fix_is_applied_exactly_when_plain_torchvision_fails():
    plain = _run_python('import torchvision')
    fixed = any(line.startswith('torchvision:') for line in compat.APPLIED)
    if plain.returncode == 0:
        assert not fixed, 'the torchvision fix was applied although torchvision imports on its own'
    else:
        assert 'operator torchvision::nms does not exist' in plain.stderr
        assert fixed


def test_basicsr_degradations_import_and_use_the_renamed_functional_tensor():
    import torch
    from basicsr.data import degradations
    gray = degradations.rgb_to_grayscale(torch.rand(3, 4, 4))
    assert gray.shape == (1, 4, 4)


def test_functional_tensor_fix_leaves_an_existing_module_alone(monkeypatch):
    existing = types.ModuleType('torchvision.transforms.functional_tensor')
    monkeypatch.setitem(sys.modules, 'torchvision.transforms.functional_tensor', existing)
    assert compat.fix_functional_tensor() is False
    assert sys.modules['torchvision.transforms.functional_tensor'] is existing


def test_basicsr_niqe_imports_without_scipy_deprecation():
    with warnings.catch_warnings():
        warnings.simplefilter('error', DeprecationWarning)
        from scipy.ndimage.filters import convolve
    out = convolve(np.ones((5, 5)), np.ones((3, 3)) / 9, mode='nearest')
    assert np.allclose(out, 1.0)
    from basicsr.metrics import niqe  # noqa: F401


def test_fixes_are_idempotent():
    before = list(compat.APPLIED)
    assert compat.apply() == before


def test_same_lmdb_opened_by_train_and_val_datasets_in_one_process(tmp_path):
    """BasicSR opens one LMDB environment per dataset; lmdb >= 2 refuses the second open."""
    import cv2
    from basicsr.data.paired_image_dataset import PairedImageDataset
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    rng = np.random.default_rng(0)
    for folder, size in (('gt', 16), ('lq', 8)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / 'a.png'), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        make_lmdb_from_imgs(str(tmp_path / folder), str(tmp_path / f'{folder}.lmdb'), ['a.png'], ['a'],
                            map_size=1 << 24)
    def options(**extra):
        return {'dataroot_gt': str(tmp_path / 'gt.lmdb'), 'dataroot_lq': str(tmp_path / 'lq.lmdb'),
                'io_backend': {'type': 'lmdb'}, 'scale': 2, 'phase': 'val', **extra}

    train = PairedImageDataset(options(phase='train', gt_size=8, use_hflip=True, use_rot=True))
    val = PairedImageDataset(options())
    assert train[0]['gt'].shape == (3, 8, 8)
    assert val[0]['gt'].shape == (3, 16, 16)


def test_package_import_registers_lksmn():
    from basicsr.utils.registry import ARCH_REGISTRY
    assert ARCH_REGISTRY.get('LKSMN') is lksmn_arch.LKSMN or ARCH_REGISTRY.get('LKSMN').__name__ == 'LKSMN'


def test_scipy_fix_does_nothing_when_filters_is_already_fine(monkeypatch):
    import scipy.ndimage
    monkeypatch.setitem(sys.modules, 'scipy.ndimage.filters', scipy.ndimage)
    assert compat.fix_scipy_ndimage_filters() is False


@pytest.mark.parametrize('message', ['operator torchvision::roi_align does not exist', 'something else'])
def test_torchvision_fix_reraises_errors_it_does_not_know(monkeypatch, message):
    import builtins
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == 'torchvision':
            raise RuntimeError(message)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', failing_import)
    with pytest.raises(RuntimeError, match=message):
        compat.fix_torchvision_ops()
