"""Where a device benchmark's result goes: one JSON line on stdout, and the
same line in ``$OUT/<name>`` when the device runner sets ``$OUT``."""

from __future__ import annotations

import json
import os


def emit(report: dict, name: str) -> None:
    line = json.dumps(report)
    print(line)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], name), "w") as handle:
            handle.write(line + "\n")
