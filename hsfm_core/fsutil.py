"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hsfm_core.errors import InputError


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it over `target`.

    The temporary file lives in the same directory so that the final `os.replace` is a
    same-filesystem rename (atomic on POSIX). On error the temporary file is removed and
    `target` is untouched.
    """
    target = Path(target)
    if target.is_dir():
        raise InputError(f"{target} is a folder; give a file path to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _unwritable(target, exc) from None
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would follow the umask
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(tmp_path, target)
        except OSError as exc:  # the target became a folder meanwhile, or cannot be replaced
            raise _unwritable(target, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


# A path that cannot be written (a folder, a file where a folder should be, no permission, read-only) is the
# caller's input: an InputError naming it. Other failures (a full disk, an I/O error) stay OSErrors.
_PATH_ERRORS = {errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.ENAMETOOLONG, errno.ENOENT, errno.ELOOP}


def _unwritable(target: Path, exc: OSError) -> OSError | InputError:
    if exc.errno not in _PATH_ERRORS:
        return exc
    where = exc.filename if exc.filename and str(exc.filename) != str(target) else None
    if where and Path(where).name.startswith(f".{target.name}."):  # our temporary file: the folder is the problem
        where = None
    if exc.errno in (errno.EEXIST, errno.ENOTDIR) and where:
        why = f"{where} is a file, not a folder"
    elif exc.errno == errno.EISDIR:
        why = "it is a folder"
    else:
        why = (exc.strerror or type(exc).__name__) + (f" ({where})" if where else "")
    return InputError(f"cannot write {target}: {why}")


def current_umask() -> int:
    """The process umask, read without changing it (os.umask sets it, racing other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")
