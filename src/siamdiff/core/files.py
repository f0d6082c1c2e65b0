"""Writing files so that a crash or a full disk never leaves half a file: the one mechanism every writer uses."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import SiamdiffError


def _reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


_HELD: dict[Path, int] = {}  # the paths this process holds locked, and how deeply


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``path`` — an output updated in place: an index, a run folder — for this process while it is written:
    another siamdiff process that asks for it meanwhile is refused with one line (a ``SiamdiffError``), so two
    writers never both "succeed" with one's work lost. The lock is an advisory ``flock`` of the file ``.NAME.lock``
    beside ``path``, released when the process ends however it ends (the empty file stays). Nested use in one
    process holds it once. Where the folder of ``path`` does not exist yet, or the system has no ``flock``
    (Windows), nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on the platforms siamdiff is tested on
        fcntl = None
    target = Path(os.path.abspath(path))
    if fcntl is None or target in _HELD or not target.parent.is_dir():
        _HELD[target] = _HELD.get(target, 0) + 1
        try:
            yield
        finally:
            _HELD[target] -= 1
            if not _HELD[target]:
                del _HELD[target]
        return
    try:
        fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SiamdiffError(f"cannot write '{path}': {_reason(exc)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SiamdiffError(f"'{path}' is being written by another siamdiff process: wait until it is done, or "
                                f"give another {{out}}", "out") from None
        _HELD[target] = 1
        try:
            yield
        finally:
            del _HELD[target]
    finally:
        os.close(fd)


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` if a file can be written there (its folder exists and is writable, it is not a
    folder), else a one-line ``SiamdiffError`` — for commands to check their output before the work that fills it."""
    dest = Path(path)
    parent = dest.parent
    if not parent.is_dir():
        raise SiamdiffError(f"cannot write '{dest}': folder '{parent}' does not exist")
    if dest.is_dir():
        raise SiamdiffError(f"cannot write '{dest}': is a directory")
    if dest.exists() and not dest.is_file():  # a pipe or a device would be replaced by a plain file
        raise SiamdiffError(f"cannot write '{dest}': not a regular file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SiamdiffError(f"cannot write '{dest}': folder '{parent}' is not writable")
    return dest


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it and ``os.replace`` it into place.

    A crash leaves the old file or the complete new one. The new file keeps the permissions of the file it replaces
    (0644 for a new one, not mkstemp's 0600). A missing or unwritable folder, a directory at ``path`` and any
    I/O failure while writing (a full disk: an ``OSError``, or a serializer's own error type such as safetensors')
    become one-line ``SiamdiffError``s; the temp file is always removed.
    """
    dest = check_writable(path)
    parent = dest.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise SiamdiffError(f"cannot write '{dest}': {_reason(exc)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        try:
            mode = dest.stat().st_mode & 0o777
        except OSError:
            mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise SiamdiffError(f"cannot write '{dest}': {_reason(exc)}") from None
        reason = next((r for r in _IO_FAILURES if r in str(exc).lower()), None) if isinstance(exc, Exception) else None
        if reason:
            raise SiamdiffError(f"cannot write '{dest}': {reason}") from None
        raise
    _fsync_directory(parent)
    return dest


# what serializers that do not raise OSError (safetensors) say when the disk is full or the write fails, the most
# telling first
_IO_FAILURES = ("no space left on device", "disk quota exceeded", "read-only file system", "i/o error")


def _fsync_directory(folder: Path) -> None:
    """Best effort: persist the rename itself (not possible on every OS/filesystem)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Make the folder ``path`` (as :func:`make_folder`) for the block that fills it; if the block fails, the folders
    made here that are still empty are removed again, so a failed command leaves nothing behind."""
    folder = Path(path)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    make_folder(folder)
    try:
        yield folder
    except BaseException:
        for p in made:
            try:
                p.rmdir()  # only ever an empty folder
            except OSError:
                break
        raise


def make_folder(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` with its parents (an existing folder is fine), or raise a one-line
    ``SiamdiffError``: the one way every command makes its output folder."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise SiamdiffError(f"cannot create folder '{folder}': a file of that name is in the way")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SiamdiffError(f"cannot create folder '{folder}': {_reason(exc)}") from None
    return folder
