"""Compatibility fixes that let the released basicsr 1.4.2 import and run on a 2026 stack.

Every fix checks that its breakage is present before it changes anything, so on a working
torchvision, BasicSR master or a fork the module does nothing. ``apply()`` runs when ``lksmn_arch``
is imported, before anything imports basicsr, and is idempotent. ``APPLIED`` lists what it did.

The lmdb breakage (lmdb >= 2 refuses to open one environment twice in a process, which BasicSR does
when train and val read the same LMDB) is fixed by the ``lmdb<2`` pin in setup.py instead of a patch:
lmdb 1.x reads exactly as BasicSR expects, and patching BasicSR's LMDB backend to share environments
across DataLoader worker forks would be more code than it saves.
"""
import importlib
import importlib.util
import re
import sys
import types
import warnings
from typing import List, Optional

import torch

APPLIED: List[str] = []

# Schemas of the torchvision operators that torchvision's fake-kernel registrations need to exist.
_TORCHVISION_OP_SCHEMAS = {
    'nms': 'nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
    'qnms': 'qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
}
_MISSING_OP = re.compile(r'operator torchvision::(\w+) does not exist')
_torchvision_library: Optional[torch.library.Library] = None


def _forget_modules(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + '.')]:
        del sys.modules[name]


def fix_torchvision_ops() -> bool:
    """Make a torchvision whose C++ extension cannot load (a CUDA wheel on CPU torch) importable.

    Its ``_meta_registrations`` registers fake kernels for ``torchvision::nms``/``qnms``, which only
    the extension defines; declaring the schemas first lets the pure-Python part import. The C++ ops
    (nms, roi_align, ...) stay unavailable; BasicSR's SR path does not use them.
    """
    global _torchvision_library
    declared = []
    while True:
        try:
            import torchvision  # noqa: F401
            break
        except RuntimeError as error:
            match = _MISSING_OP.search(str(error))
            if not match or match.group(1) not in _TORCHVISION_OP_SCHEMAS or match.group(1) in declared:
                raise
            _forget_modules('torchvision')
            if _torchvision_library is None:
                _torchvision_library = torch.library.Library('torchvision', 'FRAGMENT')
            _torchvision_library.define(_TORCHVISION_OP_SCHEMAS[match.group(1)])
            declared.append(match.group(1))
        except ImportError:
            return False  # no torchvision at all: basicsr's own import will say so
    if declared:
        APPLIED.append(f'torchvision: declared {", ".join(declared)} schemas (its C++ extension did not load)')
    return bool(declared)


def fix_functional_tensor() -> bool:
    """Alias ``torchvision.transforms.functional_tensor`` (renamed ``_functional_tensor`` in 0.17)."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return False
    try:
        if importlib.util.find_spec(name) is not None:
            return False
        renamed = importlib.import_module('torchvision.transforms._functional_tensor')
    except ImportError:
        return False
    sys.modules[name] = renamed
    APPLIED.append(f'{name}: aliased to torchvision.transforms._functional_tensor')
    return True


def fix_scipy_ndimage_filters() -> bool:
    """Alias ``scipy.ndimage.filters`` (deprecated, removed in SciPy 2.0) to ``scipy.ndimage``."""
    name = 'scipy.ndimage.filters'
    try:
        import scipy.ndimage
    except ImportError:
        return False
    if isinstance(sys.modules.get(name), types.ModuleType) and sys.modules[name] is scipy.ndimage:
        return False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            getattr(importlib.import_module(name), 'convolve')
            broken = any(issubclass(w.category, DeprecationWarning) for w in caught)
        except (ImportError, AttributeError):
            broken = True
    if not broken:
        return False
    sys.modules[name] = scipy.ndimage
    scipy.ndimage.filters = scipy.ndimage
    APPLIED.append(f'{name}: aliased to scipy.ndimage')
    return True


def fix_cpu_distributed() -> bool:
    """Let BasicSR's ``--launcher pytorch`` run on machines without CUDA (torchrun with gloo).

    BasicSR 1.4.2 calls ``torch.cuda.set_device(rank % device_count())`` (ZeroDivisionError without a
    GPU) before ``init_process_group``, and wraps networks in ``DistributedDataParallel`` with
    ``device_ids=[torch.cuda.current_device()]``. Without CUDA both steps are skipped, and the
    ``nccl`` backend (CUDA only) becomes ``gloo``. With CUDA nothing changes.
    """
    if torch.cuda.is_available():
        return False
    from basicsr.models import base_model
    from basicsr.utils import dist_util
    if getattr(dist_util._init_dist_pytorch, '_lksmn_cpu', False):
        return False

    def _init_dist_pytorch(backend: str = 'gloo', **kwargs) -> None:
        import torch.distributed as dist
        dist.init_process_group(backend='gloo' if backend == 'nccl' else backend, **kwargs)

    def model_to_device(self, net):
        net = net.to(self.device)
        if self.opt['dist']:
            return torch.nn.parallel.DistributedDataParallel(
                net, find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return net

    _init_dist_pytorch._lksmn_cpu = True
    dist_util._init_dist_pytorch = _init_dist_pytorch
    base_model.BaseModel.model_to_device = model_to_device
    APPLIED.append('basicsr distributed: CPU process groups (gloo) and DistributedDataParallel without CUDA')
    return True


def apply() -> List[str]:
    """Apply every fix whose breakage is present; return the list of what was applied so far."""
    fix_torchvision_ops()
    fix_functional_tensor()
    fix_scipy_ndimage_filters()
    fix_cpu_distributed()
    return APPLIED
