"""Writing outputs so that nothing is ever half-written: to a temporary sibling,
then renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a hidden sibling of ``path`` (same suffix, so writers
    that pick a format from it still work), then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
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
    parent = folder.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=parent))
    try:
        write(tmp)
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
