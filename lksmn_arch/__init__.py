"""lksmn_arch: LKSMN for lightweight image super-resolution, as a BasicSR 1.4.2 plugin.

Importing the package applies the compatibility fixes of ``lksmn_arch.compat`` (before basicsr is
imported) and registers ``LKSMN`` in BasicSR's ``ARCH_REGISTRY``, so that
``basicsr.archs.build_network({'type': 'LKSMN', 'upscale': 4})`` works in any BasicSR project.
"""
from .compat import apply as _apply_compat

_apply_compat()

from .registry import tolerate_reregistration  # noqa: E402

tolerate_reregistration()

from .archs import *  # noqa: E402,F401,F403
from .models import *  # noqa: E402,F401,F403
from .archs.lksmn_arch import LKSMN  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ['LKSMN', '__version__']
