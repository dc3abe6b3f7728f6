"""What reaches the terminal: nothing on stderr when a command succeeds, user
text printed as written, and a CPU memory measure without the profiler."""

from __future__ import annotations

import subprocess
import sys

import torch

from crossget_cli.profile.cpu_memory import peak_allocated_bytes


def _crossget(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from crossget_cli.cli.app import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_successful_compress_and_profile_print_nothing_on_stderr(tmp_path):
    """A green run's log has no line a user would grep for (the torch profiler's
    USDT lines and its GPU probe's ERROR line were printed on every run)."""
    compressed = _crossget("compress", "-m", "crossget-shapes-tiny", "--vision-r", "4", "-o", str(tmp_path / "out"))
    assert compressed.returncode == 0, compressed.stderr
    assert compressed.stderr == ""
    assert f"wrote {tmp_path / 'out'}" in compressed.stdout
    profiled = _crossget(
        "profile", "-m", "crossget-shapes-tiny", "--vision-r", "4", "--batch-sizes", "1,2", "--warmup", "0", "--repeats", "1"
    )
    assert profiled.returncode == 0, profiled.stderr
    assert profiled.stderr == ""
    assert "rv4_rl0" in profiled.stdout


def test_notes_and_hints_keep_their_brackets(capsys):
    from crossget_cli.cli import app

    app.stderr.print("note: pip install 'crossget[coco]' for METEOR")
    assert "crossget[coco]" in capsys.readouterr().err


def test_cpu_peak_memory_counts_live_tensors_created_in_the_call():
    x = torch.zeros(1000, 250)  # 1e6 bytes, an input: not counted
    megabyte = x.numel() * 4

    def call(x):
        a = x + 1  # 1 MB alive
        b = a * 2  # 2 MB alive: the peak
        del a
        view = b.view(-1)  # a view: no new memory
        b.add_(1)  # in place: none either
        c = view + 1  # 2 MB again (b and c)
        return c.sum()  # 4 bytes more while b and c are alive

    assert peak_allocated_bytes(call, x) == 2 * megabyte + 4
