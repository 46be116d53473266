"""Every benchmark has a real ``--help``: usage, exit 0, and nothing heavy runs.

The check runs each script's ``--help`` in a new process and reports at exit whether torch
(or a llama.cpp server, or any model) was touched; a script that started its run before
parsing options would import torch or time out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))
PROBE = """
import atexit, json, os, runpy, sys
path = sys.argv[1]
atexit.register(lambda: os.write(2, ("\\nPROBE " + json.dumps(
    {"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules})
    ).encode()))
sys.argv = [path, "--help"]
sys.path.insert(0, os.path.dirname(path))
runpy.run_path(path, run_name="__main__")
"""


def test_there_are_benchmarks() -> None:
    assert {"roofline.py", "lora_vs_trl.py", "scoring_vs_lm_eval.py", "spine.py"} <= {
        p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_prints_usage_and_runs_nothing(script: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLAMA_URLS": "http://127.0.0.1:9/v1"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(script)], capture_output=True,
                          text=True, env=env, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: "), done.stdout[:500]
    assert "--help" in done.stdout
    probe = json.loads(done.stderr.rsplit("PROBE ", 1)[1])
    assert probe == {"torch": False, "transformers": False}
