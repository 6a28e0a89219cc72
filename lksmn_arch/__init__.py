"""lksmn_arch: LKSMN for lightweight image super-resolution, as a BasicSR 1.4.2 plugin.

Importing the package applies the compatibility fixes of ``lksmn_arch.compat`` (before basicsr is
imported) and registers ``LKSMN`` in BasicSR's ``ARCH_REGISTRY`` (and ``LKSMNModel`` in its
``MODEL_REGISTRY``), so that ``basicsr.archs.build_network({'type': 'LKSMN', 'upscale': 4})`` works in any
BasicSR project: that is ``load()``, which runs on import.

The exceptions are three console scripts: ``lksmn-upscale``, whose ``--help`` and argument errors should answer
in well under a second, not after the seconds torch and BasicSR take to import, and ``lksmn-train`` and
``lksmn-test``, which turn a Ctrl-C during those seconds into one line. When the running program is one of
them, the import only defines ``load()``, and the command calls it itself.
"""
import os
import sys
from typing import Any

from .version import __version__

# console scripts that call load() themselves, after parsing their arguments
DEFERRED_LOAD_COMMANDS = ('lksmn-upscale', 'lksmn-train', 'lksmn-test')
_loaded = False


def load() -> None:
    """Apply the compatibility fixes and register LKSMN and LKSMNModel with BasicSR (idempotent)."""
    global _loaded
    if _loaded:
        return
    from .compat import apply as apply_compat
    apply_compat()
    from .registry import tolerate_reregistration
    tolerate_reregistration()
    from . import archs, models  # noqa: F401  (their modules register their classes)
    _loaded = True


def __getattr__(name: str) -> Any:
    if name == 'LKSMN':
        load()
        from .archs.lksmn_arch import LKSMN
        return LKSMN
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


_program = os.path.basename(sys.argv[0]) if getattr(sys, 'argv', None) else ''
if _program not in DEFERRED_LOAD_COMMANDS:
    load()

__all__ = ['LKSMN', '__version__', 'load']
