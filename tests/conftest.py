"""Shared fixtures and the suite's rules.

Fixtures: an isolated store and model cache, task-file factories, the CLI runner, the real
SmolLM2 and a tiny random model. Plain helpers that are not fixtures live in helper modules
(``cli_helpers``, ``report_helpers``, ``openai_stub``); a test file never imports from
another test file.

Rules (issue 20):
- ``model``: a test that loads a bundled model (SmolLM2, its tokenizer, or MiniLM) is marked
  so, by its fixtures or by hand; an unmarked test that tries is stopped with an error that
  says to mark it. ``-m "not model"`` is the model-free tier.
- With ``CI=true``, a skipped test fails the run unless :data:`ALLOWED_SKIPS` lists it.
- Test data comes from ``tests/data/`` only (:data:`DATA`, slices with their licences).
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from browser_helpers import browser, page, server  # noqa: F401 (shared fixtures)
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "slices"
"""Slices of the public data sets (tests/data/slices/README.md has sources and licences)."""
MODEL_FIXTURES = {"smollm2", "tiny_model", "tiny_backend"}
"""Fixtures that load a bundled model: a test using one is marked ``model``."""
ALLOWED_SKIPS: dict[str, str] = {
    # nodeid pattern (fnmatch) -> why a skip there is acceptable even in CI. Keep it short.
}
"""Skips CI accepts. Empty: CI installs everything the suite needs (`install.sh dev`)."""
# The converted SmolLM2 is cached across test sessions (conversion takes ~20 s).
MODEL_HOME = Path(os.environ.get("TUNEWISE_TEST_HOME", Path.home() / ".cache" / "tunewise-test"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own store; the model cache is shared and read-mostly."""
    monkeypatch.setenv("TUNEWISE_DB", str(tmp_path / "store.db"))
    monkeypatch.setenv("TUNEWISE_HOME", str(MODEL_HOME))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def make_task(tmp_path: Path) -> Callable[..., Path]:
    """Write a task.yaml (dummy backend by default) next to a copy of the given rows."""

    def make(rows: list[dict] | None = None, *, source: str | None = None, limit: int = 0,
             name: str = "task.yaml", **fields) -> Path:
        if rows is None:
            lines = (DATA / (source or "snips_intents.jsonl")).read_text().splitlines()
            rows = [json.loads(x) for x in (lines[:limit] if limit else lines)]
        write_jsonl(tmp_path / "data.jsonl", rows)
        spec = {"name": "t", "kind": "classification", "data": {"path": "data.jsonl"},
                "target": 0.8, "split": {"test": 40, "dev": 20, "seed": 0},
                "backend": {"kind": "dummy"}, **fields}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec), encoding="utf-8")
        return path

    return make


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2 backend, loaded once per test session (converted once per machine)."""
    os.environ["TUNEWISE_HOME"] = str(MODEL_HOME)
    from tunewise.backends.local import LocalBackend

    return LocalBackend("smollm2-135m", batch_size=4)


def read_rows(name: str) -> list[dict]:
    """Rows of a vendored slice (``tests/data/slices/NAME``)."""
    return [json.loads(x) for x in (DATA / name).read_text(encoding="utf-8").splitlines() if x]


def e2e_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` e2e rows; the slice is already in seed 0's shuffled order (the source file is
    sorted by restaurant name), other seeds reshuffle it."""
    rows = read_rows("e2e_records.jsonl")
    if seed:
        random.Random(seed).shuffle(rows)
    assert n <= len(rows), f"the e2e slice has {len(rows)} rows"
    return rows[:n]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as a model folder, with SmolLM2's tokenizer and template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunewise.backends.local import resolve_model

    os.environ.setdefault("TUNEWISE_HOME", str(MODEL_HOME))
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("models") / "tiny"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def tiny_backend(tiny_model: Path):
    from tunewise.backends.local import LocalBackend

    return LocalBackend(str(tiny_model), batch_size=4)


@pytest.fixture(scope="module")
def module_adapter_cache(tmp_path_factory: pytest.TempPathFactory):
    """One adapter cache for a test module: its tiny run trains once, later tests reload it."""
    path = tmp_path_factory.mktemp("adapters")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEWISE_ADAPTERS", str(path))
        yield path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices gain nothing from two threads, and lose a lot on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unprivileged(command: list[str]) -> list[str]:
    """``command`` run without root's right to ignore file modes (when run as root).

    Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set with util-linux's
    ``setpriv``, so a chmod 000 file is unreadable to the child as it is to any user.
    """
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root needs setpriv (util-linux) to test file permissions"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--", *command]


# ---- suite rules -----------------------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a model fixture, or runs the real model, as ``model``."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & MODEL_FIXTURES or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.model)


_RUNNING: dict[str, pytest.Item | None] = {"item": None}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember the test being set up, before any of its fixtures (module-scoped ones too)."""
    _RUNNING["item"] = item


def pytest_configure(config: pytest.Config) -> None:
    """For the whole session, loading a bundled model needs a test marked ``model``: an
    unmarked test that reaches for one (in a fixture of any scope) fails and says so."""
    import tunewise.backends.local as local
    import tunewise.retrieval.embeddings as embeddings

    def allowed(what: str) -> None:
        item = _RUNNING["item"]
        if item is not None and not item.get_closest_marker("model"):
            raise AssertionError(f"{item.nodeid} loads {what}: mark it @pytest.mark.model "
                                 "(or use the dummy backend / a fake embedder)")

    resolve, model_path = local.resolve_model, embeddings.model_path

    def resolve_guarded(name: str) -> str:
        if name in local.BUNDLED:
            allowed(f"the bundled model {name}")
        return resolve(name)  # a model folder the test made itself is fine

    def model_path_guarded():
        allowed("the bundled embedding model")
        return model_path()

    local.resolve_model = resolve_guarded
    embeddings.model_path = model_path_guarded


_SKIPPED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(
            report.longrepr)
        _SKIPPED.append((report.nodeid, reason))


def _unexpected_skips() -> list[tuple[str, str]]:
    return [(node, why) for node, why in _SKIPPED
            if not any(fnmatch.fnmatch(node, pattern) for pattern in ALLOWED_SKIPS)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With CI=true, a skip not in ALLOWED_SKIPS fails the run (a broken import or a missing
    tool must not pass as green)."""
    if os.environ.get("CI", "").lower() != "true":
        return
    bad = _unexpected_skips()
    if bad:
        for node, why in bad:
            print(f"\nCI: unexpected skip: {node}: {why}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
