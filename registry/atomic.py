"""Writes that cannot destroy what they do not own: the one way evalboard puts a file or folder in place.

Every file evalboard writes (reports, exports, result files, per-example files, statistics,
``eval_step<N>.json`` next to checkpoints, materialized models, the checkpoints written by the
training integrations, the feature cache) goes through here:

- the bytes go into a temporary sibling in the target's own folder, with a random name, created
  exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``): a file or link planted under a name we might use
  is never opened, let alone followed;
- the temporary is flushed to disk and renamed over the target (``os.replace``), which replaces a
  link at the target rather than writing through it; readers see the old file or the whole new one;
- on any failure (a full disk, an interrupt) the temporary is removed and the target is untouched;
- a target that exists is replaced only when the caller allows it, and a read-only one only when
  the caller forces it (a file a user made read-only is one they meant to keep).
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from registry.errors import InvalidInput

__all__ = ["write_file", "atomic_file", "atomic_folder", "check_target", "check_folder_target", "fsync_path"]

_NAME_BYTES = 255
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """Flush a file (or a folder's entries) to disk; filesystems that refuse it on folders are fine."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lstat_target(final: Path) -> os.stat_result | None:
    """What is at ``final`` now, never following a link (None: nothing); a name no filesystem
    holds, or a path that cannot be looked at, is refused in one line."""
    if any(len(part.encode()) > _NAME_BYTES for part in final.parts):
        raise InvalidInput("has a file or folder name longer than 255 bytes", path=final)
    try:
        return os.lstat(final)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InvalidInput(f"cannot be used: {e.strerror or type(e).__name__}", path=final) from None


def check_target(final: str | Path, *, overwrite: bool = True, force: bool = False) -> Path:
    """Refuse a target that must not be replaced: an existing one without ``overwrite``, a folder or
    other non-file, and a read-only file without ``force``. A link at the target is fine: it is
    replaced, never followed."""
    final = Path(final)
    st = _lstat_target(final)
    if st is None:
        return final
    if not overwrite:
        raise InvalidInput("already exists; not replaced", path=final)
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInput("is a folder; give the path of a file", path=final)
    if stat.S_ISLNK(st.st_mode):
        return final
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput("exists and is not a regular file; not replaced", path=final)
    read_only = not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # root may write anything
    if not force and (read_only or not os.access(final, os.W_OK, follow_symlinks=False)):
        raise InvalidInput("is read-only; not replaced (make it writable, or pass --force where offered)", path=final)
    return final


def _temp_name(final: Path, suffix: str) -> Path:
    stem = final.name.encode()[: _NAME_BYTES - 40].decode(errors="ignore")
    return final.with_name(f".{stem}.{secrets.token_hex(8)}{suffix}")


def _create_exclusive(final: Path) -> tuple[int, Path]:
    for _ in range(16):
        tmp = _temp_name(final, ".tmp")
        try:
            return os.open(tmp, _FLAGS, 0o644), tmp
        except FileExistsError:
            continue
    raise InvalidInput("cannot create a temporary file beside it (16 names taken)", path=final)


def _as_invalid(e: OSError, final: Path) -> InvalidInput:
    return InvalidInput(f"cannot be written: {e.strerror or type(e).__name__}", path=final)


@contextmanager
def atomic_file(final: str | Path, *, overwrite: bool = True, force: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file open on a fresh temporary beside ``final``; when the block ends without an
    error it is flushed and renamed to ``final``. On an error it is removed and ``final`` is as it was.
    The parent folder must exist. OS errors become one-line ``InvalidInput`` naming ``final``."""
    final = check_target(final, overwrite=overwrite, force=force)
    try:
        fd, tmp = _create_exclusive(final)
    except OSError as e:
        raise _as_invalid(e, final) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        check_target(final, overwrite=overwrite, force=force)
        os.replace(tmp, final)
        fsync_path(final.parent, directory=True)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _as_invalid(e, final) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file(final: str | Path, data: bytes | str, *, overwrite: bool = True, force: bool = False) -> Path:
    """Put ``data`` (str is written as UTF-8) at ``final`` atomically; see `atomic_file`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(final, overwrite=overwrite, force=force) as fh:
        fh.write(payload)
    return Path(final)


def check_folder_target(final: str | Path, *, overwrite: bool = False, replace_empty: bool = False) -> Path:
    """Refuse a folder target `atomic_folder` would refuse, before any work is done."""
    final = Path(final)
    st = _lstat_target(final)
    if st is None:
        return final
    if overwrite:
        return final
    if replace_empty:
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidInput("exists and is not a folder; give a new or empty folder", path=final)
        try:
            empty = not any(os.scandir(final))
        except OSError as e:
            raise InvalidInput(f"cannot be read: {e.strerror or type(e).__name__}", path=final) from None
        if not empty:
            raise InvalidInput("exists and is not empty; give a new or empty folder", path=final)
        return final
    raise InvalidInput("already exists; not replaced", path=final)


@contextmanager
def atomic_folder(final: str | Path, *, overwrite: bool = False, replace_empty: bool = False) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``final`` (random name, created exclusively, private to
    this user until it is placed); when the block ends without an error, its files are flushed and it
    is renamed to ``final``. An existing ``final`` is replaced only with ``overwrite`` (anything) or
    ``replace_empty`` (an empty folder, checked as it is removed); a link there is never followed.
    On an error the temporary folder is removed and ``final`` is untouched."""
    final = Path(final)
    check_folder_target(final, overwrite=overwrite, replace_empty=replace_empty)
    tmp = _temp_name(final, ".tmp")
    try:
        os.mkdir(tmp, 0o700)
    except OSError as e:
        raise _as_invalid(e, final) from None
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file() and not child.is_symlink():
                fsync_path(child)
        os.chmod(tmp, 0o755)
        fsync_path(tmp, directory=True)
        if os.path.lexists(final) and not overwrite:
            check_folder_target(final, overwrite=overwrite, replace_empty=replace_empty)
            try:
                os.rmdir(final)  # only an empty folder goes, whatever arrived in it meanwhile
            except OSError:
                raise InvalidInput("is no longer an empty folder; not replaced", path=final) from None
        if os.path.lexists(final):
            old = _temp_name(final, ".old")
            os.mkdir(old, 0o700)
            os.rename(final, old / final.name)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_path(final.parent, directory=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _as_invalid(e, final) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
