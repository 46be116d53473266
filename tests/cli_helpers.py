"""Run the real `tunewise` entry point in a subprocess: exit codes and stderr as users see them."""

from __future__ import annotations

import subprocess
import sys


def tunewise(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m tunewise.cli ARGS`` with this test's environment (store, cwd)."""
    return subprocess.run([sys.executable, "-m", "tunewise.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
