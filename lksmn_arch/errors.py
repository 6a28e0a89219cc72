"""The error classes that several parts of the package raise, kept apart so that none imports another for them,
and how a library's many-line error message becomes part of one line."""
from typing import Optional


class TrainingError(RuntimeError):
    """A fault that stops training; ``lksmn-train`` reports it as one line (exit status 1)."""


def first_line(error: BaseException, limit: Optional[int] = None) -> str:
    """The first line of ``error``'s message (cut at ``limit`` characters), 'no details' when it has none: the
    part of a library's error (torch, ONNX Runtime, OpenVINO, safetensors) that fits in a one-line message."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else 'no details'
    return line[:limit] if limit else line
