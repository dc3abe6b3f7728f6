"""Writing outputs so that nothing is ever half-written: to a temporary sibling,
then renamed into place.

Temporaries are named ``.<name>.tmp-<pid>-<random>`` so that a later write to the
same place can tell ours from anyone else's and remove those whose process is
gone (killed during a long export, say). Output locations are checked before any
work starts (:func:`check_writable`); an ``OSError`` while writing still becomes
a :class:`~crossget_cli.errors.CrossGetError` naming the path."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from crossget_cli.errors import CrossGetError

_WRITE_HINT = "choose another location, or check its permissions and free space"


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(path: str | os.PathLike, option: str = "--output", *, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written: one under a
    file, one whose nearest existing folder does not accept new files (read-only,
    no permission), a name the file system cannot hold, or an existing entry of
    the wrong kind (a folder where a file goes, or a file where a folder goes)."""
    path = Path(path).expanduser().absolute()
    existing = next(parent for parent in path.parents if _exists(parent))
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    for part in path.relative_to(existing).parts:
        if len(os.fsencode(part)) > name_max:
            raise CrossGetError(f"{option} {path}: the name {part[:40]}... is longer than {name_max} bytes", "use a shorter name")
    if not existing.is_dir():
        raise CrossGetError(f"{option} {path}: {existing} is not a folder", "choose another location")
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise CrossGetError(f"{option} {path} is {kind}", f"pass a {'folder' if folder else 'file'} path")
    try:  # os.access is not enough: root passes it on read-only mounts
        handle, probe = tempfile.mkstemp(prefix=".crossget-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise CrossGetError(f"cannot write {option} {path}: {err.strerror or err} in {existing}", _WRITE_HINT) from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, say: it does not exist either
        return False


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a hidden sibling of ``path`` (same suffix, so writers
    that pick a format from it still work), then rename it over ``path``."""
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def write_folder(folder: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a fresh hidden sibling folder of ``folder`` (parents
    created), then move it to ``folder``, replacing what was there; if ``write``
    fails, the sibling is removed and ``folder`` is left as it was."""
    folder = Path(folder)
    with _writing(folder):
        parent = folder.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{os.getpid()}-", dir=parent))
        try:
            write(tmp)
            replace_folder(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        where = err.filename or path
        raise CrossGetError(f"cannot write {path}: {err.strerror or err} ({where})", _WRITE_HINT) from err


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that earlier writes of ``path`` left behind when their
    process died (``.<name>.tmp-<pid>-...`` with no live ``<pid>``, and the
    ``.<name>.old-...`` folders of an interrupted replacement). Returns them."""
    path = Path(path)
    parent = path.resolve().parent
    if not parent.is_dir():
        return []
    pattern = re.compile(
        rf"^\.(?:{re.escape(path.name)}|{re.escape(path.stem)})\.(?:tmp-(?P<pid>\d+)-[^/]*|tmp-[^/]*|tmp{re.escape(path.suffix)}|old-[^/]*)$"
    )
    removed = []
    for entry in parent.iterdir():
        found = pattern.match(entry.name)
        if found is None or (found["pid"] is not None and _alive(int(found["pid"]))):
            continue
        if ".old-" in entry.name and (not path.exists() or _recent(entry)):
            continue  # a replacement may be under way, or died before ``path`` was back
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # someone else's live process
        return True
    return True


def _recent(entry: Path) -> bool:
    """An ``.old-`` folder lives only between two renames of :func:`replace_folder`;
    one older than a minute belongs to a process that died there."""
    try:
        return time.time() - entry.stat().st_mtime < 60
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished folder ``tmp`` to ``folder``, replacing what was there.

    ``tmp`` comes from ``mkdtemp`` (mode 0700) and some writers create 0600 files:
    the result gets the modes a plain ``mkdir``/``open`` would have given (umask)."""
    mask = _umask()
    for path in [tmp, *tmp.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old / "data")
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
