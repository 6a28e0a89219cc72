"""Inference: the ``Upscaler`` with tiling and self-ensemble (``upscaler``), image files and folders (``files``),
ONNX export and the ONNX Runtime and OpenVINO backends (``export``), inference paths and latency (``latency``).

``lksmn_arch.inference.Upscaler`` is the public entry point; it is imported on first use, so that importing a
sibling module (``lksmn_arch.inference.files`` for ``lksmn-upscale --help``) does not load the network.
"""
from typing import Any

_PUBLIC = ('Upscaler', 'ALPHA_MODES', 'PRECISIONS')


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        from lksmn_arch.inference import upscaler
        return getattr(upscaler, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list:
    return sorted(list(globals()) + list(_PUBLIC))
