"""One reader for the one-line files of /proc, /sys and the cgroup hierarchy (CPU quota, memory limit, topology)."""
from typing import Optional


def read_value(path: str) -> Optional[str]:
    """The file's text without surrounding whitespace; None when it cannot be read (absent on this system)."""
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None
