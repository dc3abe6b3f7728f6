"""Outputs are never half-written and never left behind: temporaries of a dead
writer are removed by the next write to the same place, SIGTERM unwinds a write,
and unwritable locations are refused before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crossget_cli.errors import CrossGetError
from crossget_cli.files import check_writable, remove_stale_temporaries, write_atomic, write_folder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale_folder = tmp_path / f".out.tmp-{dead}-abc123"
    (stale_folder / "sub").mkdir(parents=True)
    (stale_folder / "sub" / "model.safetensors").write_bytes(b"x" * 1000)
    live_folder = tmp_path / f".out.tmp-{alive}-def456"  # a write under way in a live process
    live_folder.mkdir()
    stale_file = tmp_path / f".report.tmp-{dead}-0a0b.json"
    stale_file.write_text("{")
    other = tmp_path / ".out.backup"  # not ours: left alone
    other.mkdir()

    write_folder(tmp_path / "out", lambda tmp: (tmp / "weights").write_text("new"))
    write_atomic(tmp_path / "report.json", lambda tmp: tmp.write_text("{}"))

    assert not stale_folder.exists() and not stale_file.exists()
    assert live_folder.is_dir() and other.is_dir()
    assert (tmp_path / "out" / "weights").read_text() == "new"
    assert (tmp_path / "report.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".out.backup", live_folder.name, "out", "report.json"]
    )


def test_old_folder_of_an_interrupted_replacement_is_kept_until_the_target_is_back(tmp_path):
    old = tmp_path / ".out.old-xyz"
    (old / "data").mkdir(parents=True)
    os.utime(old, (0, 0))  # long ago
    assert remove_stale_temporaries(tmp_path / "out") == []  # ``out`` is gone: ``old`` may be all that is left
    (tmp_path / "out").mkdir()
    assert remove_stale_temporaries(tmp_path / "out") == [old] and not old.exists()


def test_sigterm_during_a_write_leaves_no_temporary(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from pathlib import Path
        from crossget_cli.cli.app import _terminate
        from crossget_cli.files import write_folder

        signal.signal(signal.SIGTERM, _terminate)  # what ``crossget`` installs in main()

        def write(tmp):
            (tmp / "model.safetensors").write_bytes(b"x" * 100000)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

        write_folder(Path({str(tmp_path / "out")!r}), write)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "where,folder,expected",
    [
        ("a-file/out", True, "is not a folder"),
        ("a-file", True, "is a file"),
        ("a-folder", False, "is a folder"),
        ("x" * 300, False, "longer than"),
        ("new/deeper/out.json", False, None),  # missing parents are created at write time
    ],
)
def test_check_writable(tmp_path, where, folder, expected):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    if expected is None:
        check_writable(tmp_path / where, folder=folder)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]  # the probe is gone
        return
    with pytest.raises(CrossGetError, match=expected):
        check_writable(tmp_path / where, folder=folder)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a read-only file system (/proc)")
def test_check_writable_refuses_a_read_only_place_even_as_root():
    with pytest.raises(CrossGetError, match="cannot write --plot"):
        check_writable("/proc/crossget.png", "--plot")
