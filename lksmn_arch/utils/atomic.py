"""Crash-safe checkpoint writing: a file appears under its final name complete, or not at all.

``atomic_save`` writes to a hidden temporary file in the destination folder, fsyncs it and
``os.replace``s it onto the final name (then fsyncs the folder), so a process killed in the middle of a
save leaves the previous file of that name, or none, never a truncated one. Temporary files are named
``.<final name>.<random>.tmp-<pid>`` and created exclusively (``O_EXCL``: never through a name or a symbolic
link that is already there, so a link planted beside the output cannot redirect the write); they match no
``*.pth`` / ``*.state`` pattern, so resuming ignores them, and ``remove_stale_temporaries`` deletes those a
killed run left behind.
"""
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch

from lksmn_arch.errors import TrainingError

_TEMPORARY = re.compile(r'^\..+\.tmp-\d+$')


class CheckpointSaveError(TrainingError):
    """A checkpoint could not be written (disk full, folder not writable, ...)."""


def new_file_mode() -> int:
    """The mode a new file gets here: 0666 less this process's umask (read from /proc without changing it;
    umask 0o022 where it cannot be read)."""
    umask = 0o022
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('Umask:'):
                umask = int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o666 & ~umask


def create_temporary(path: Path, suffix: Optional[str] = None) -> Path:
    """Create, exclusively and empty, a hidden temporary file beside ``path`` (``.<name>.<random><suffix>``,
    ``suffix`` defaulting to ``.tmp-<pid>``), with the mode a new file gets (0666 less the umask)."""
    try:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                                        suffix=f'.tmp-{os.getpid()}' if suffix is None else suffix)
    except OSError as error:  # name the file the user asked for, not the temporary
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        os.fchmod(handle, new_file_mode())
    finally:
        os.close(handle)
    return Path(name)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _fsync_file(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def replace_atomically(path: os.PathLike, write: Callable[[Path], None], *, suffix: Optional[str] = None,
                       durable: bool = True) -> None:
    """Have ``write`` fill a temporary file beside ``path``, then rename it onto ``path``.

    Readers see the old file or the complete new one, never a partial one; on any failure the temporary
    file is removed and ``path`` is untouched. The temporary is made by ``create_temporary`` (exclusive,
    unpredictable; ``suffix`` as there) and handed to ``write`` existing and empty. ``durable`` also fsyncs the
    file and its folder (checkpoints) rather than leaving that to the OS.
    """
    path = Path(path)
    temporary = create_temporary(path, suffix)
    try:
        write(temporary)
        if durable:
            _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        try:
            temporary.unlink()
        except OSError:
            pass
        raise
    if durable:
        _fsync_folder(path.parent)


def _write_once(obj: Any, path: Path) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, 'wb') as handle:
            torch.save(obj, handle)

    replace_atomically(path, write)


def atomic_save(obj: Any, path: os.PathLike, what: str, attempts: int = 3,
                warn: Optional[Callable[[str], None]] = None) -> None:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace``.

    Failed writes are retried ``attempts`` times, one second apart (as BasicSR does for flaky network
    filesystems); then ``CheckpointSaveError`` says what (``what``) could not be written where and why.
    A file already at ``path`` is left as it was.
    """
    path = Path(path)
    for attempt in range(1, attempts + 1):
        try:
            _write_once(obj, path)
            return
        except Exception as error:  # OSError, or torch's RuntimeError wrapping a failed write
            reason = f'{type(error).__name__}: {error}'
            if attempt < attempts:
                if warn is not None:
                    warn(f'Could not save {what} {path} ({reason}); retrying ({attempts - attempt} left).')
                time.sleep(1)
                continue
            previous = 'the previous file of that name is unchanged' if path.exists() else 'nothing was written'
            raise CheckpointSaveError(
                f'could not save {what} to {path} after {attempts} attempts ({reason}); {previous}, and the '
                f'checkpoints already in {path.parent} are intact. Free disk space or fix permissions there, '
                f'then resume with --auto_resume.') from error


def check_writable(folder: os.PathLike, what: str = 'folder') -> None:
    """Create ``folder`` if needed and write, fsync and delete a small file in it; ``CheckpointSaveError``
    (naming the folder and the reason) if that fails, so that an unwritable or full disk is reported
    before training starts rather than at the first checkpoint."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.write-check-', suffix=f'.tmp-{os.getpid()}') as probe:
            probe.write(b'\0' * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise CheckpointSaveError(f'cannot write to the {what} {folder} ({error.strerror or error}): '
                                  f'checkpoints could not be saved there. Run from a folder you can write to, '
                                  f'or free disk space.') from error


def remove_stale_temporaries(folder: os.PathLike) -> List[Path]:
    """Delete the temporary files that killed saves left in ``folder``; the paths removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if _TEMPORARY.match(path.name) and path.is_file():
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed
