"""`make demo` works: the demo script runs end to end and reports nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_demo_runs_and_loses_nothing():
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo: none lost." in result.stdout
    assert "receiver cut off" in result.stdout
    assert "lost                                   0" in result.stdout
