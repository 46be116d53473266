"""A clean terminal (issue 18): the libraries' warnings and bars are silenced at the
source, the bundled model's first load prints one line, bars count test items, and
--quiet / --verbose work."""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import pytest
from cli_helpers import tunewise

from tunewise import noise
from tunewise.cli import app


@pytest.fixture(autouse=True)
def _default_level(monkeypatch):
    monkeypatch.setattr(noise, "LEVEL", {"verbose": False, "quiet": False})
    monkeypatch.delenv("TUNEWISE_VERBOSE", raising=False)


def _warn(category: type[Warning], module: str) -> None:
    warnings.warn_explicit("`past_key_values` is deprecated", category, "lib.py", 1,
                           module=module, registry={})


def test_library_warnings_are_dropped_and_tunewise_own_are_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        noise.quiet_libraries()
        _warn(FutureWarning, "torch.nn.modules.module")  # where transformers' one points
        _warn(FutureWarning, "transformers.models.llama")
        _warn(UserWarning, "peft.tuners")
        _warn(UserWarning, "tunewise.ladder")
    assert [str(w.message) for w in caught] == ["`past_key_values` is deprecated"]
    assert caught[0].filename == "lib.py" and caught[0].category is UserWarning


def test_verbose_keeps_library_warnings(monkeypatch):
    monkeypatch.setitem(noise.LEVEL, "verbose", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        noise.quiet_libraries()
        _warn(FutureWarning, "transformers.models.llama")
    assert len(caught) == 1


def test_silenced_swallows_a_bar_and_replays_it_when_the_step_fails(capfd):
    from tqdm.auto import tqdm

    with noise.silenced():
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            warnings.warn("noise", FutureWarning, stacklevel=1)
    assert capfd.readouterr().err == ""
    with pytest.raises(RuntimeError), noise.silenced():
        print("what the library said", file=sys.stderr)
        raise RuntimeError("conversion failed")
    assert "what the library said" in capfd.readouterr().err


@pytest.mark.model  # finds the bundled model package
def test_first_load_of_the_bundled_model_prints_one_line(tmp_path, monkeypatch, capfd):
    """The conversion path with transformers' loaders replaced by fakes that are as chatty
    as the real ones (a tqdm bar of tensor names, a FutureWarning, a shards bar)."""
    import transformers
    from tqdm.auto import tqdm

    from tunewise.backends import local

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("TUNEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(local, "bundled_model_file", lambda name: gguf)

    class Chatty:
        config = type("Config", (), {})()

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            for _ in tqdm(range(272), desc="Converting and de-quantizing GGUF tensors..."):
                pass
            warnings.warn("`past_key_values` is deprecated", FutureWarning, stacklevel=1)
            return cls()

        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            for _ in tqdm(range(2), desc="Writing model shards"):
                (Path(folder) / "config.json").write_text("{}")

    monkeypatch.setattr(transformers, "AutoTokenizer", Chatty)
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Chatty)
    capfd.readouterr()
    path = local.resolve_model("smollm2-135m")
    assert (Path(path) / "config.json").is_file()
    err = capfd.readouterr().err
    assert err == "preparing the bundled model smollm2-135m (first run only)\n"
    assert local.resolve_model("smollm2-135m") == path  # converted: silent from now on
    assert capfd.readouterr().err == ""


@pytest.mark.model  # few_shot_knn embeds with the bundled MiniLM
def test_progress_bars_count_test_items_of_each_rung(make_task, tmp_path):
    """few_shot_best scores dev sets while preparing: those calls are not the previous
    rung's items (the bar once read 288/96)."""
    from tunewise.ladder import Hooks, run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    task = load_task(make_task(limit=200, rungs=["few_shot_knn", "few_shot_best"]))
    bars: list[list] = []
    hooks = Hooks(start_rung=lambda name, total: bars.append([name, total, 0]),
                  advance=lambda n: bars[-1].__setitem__(2, bars[-1][2] + n))
    run_ladder(task, Store(tmp_path / "s.db"), hooks=hooks, climb_all=True)
    assert bars == [["few_shot_knn", 40, 40], ["few_shot_best", 40, 40]]


def test_a_run_prints_no_warning_line(make_task):
    """Dummy model, but the real embedding model (few_shot_knn) and the real CLI."""
    task = make_task(limit=200, rungs=["zero_shot", "few_shot_knn"])
    out = tunewise("run", str(task), "--all", timeout=900)  # loads MiniLM: slow when busy
    assert out.returncode == 0, out.stderr
    assert "few_shot_knn" in out.stdout
    assert not [line for line in out.stderr.splitlines() if "Warning" in line], out.stderr


def test_quiet_prints_results_only_and_verbose_excludes_quiet(make_task, runner):
    task = make_task(limit=200, rungs=["zero_shot"], budget={"max_usd": 5.0})
    loud = runner.invoke(app, ["run", str(task)])
    assert re.search(r"estimate: up to \d+ model calls", loud.output)
    quiet = runner.invoke(app, ["--quiet", "run", str(task), "--json"])
    assert quiet.exit_code == 0, quiet.output
    assert json.loads(quiet.output)["rungs"][0]["status"] == "done"  # stdout is only JSON
    quiet = runner.invoke(app, ["-q", "run", str(task)])
    assert "estimate:" not in quiet.output and "Verdict:" in quiet.output
    both = tunewise("--quiet", "--verbose", "run", str(task))
    assert both.returncode == 2 and "choose one of --quiet and --verbose" in both.stderr


@pytest.mark.integration
def test_local_model_run_prints_no_warning_line(make_task):
    """The real SmolLM2 (FutureWarning about past_key_values, twice, before the fix)."""
    task = make_task(limit=200, rungs=["zero_shot"], split={"test": 8, "dev": 4, "seed": 0},
                     backend={"kind": "local", "model": "smollm2-135m", "batch_size": 4})
    out = tunewise("run", str(task), timeout=600)
    assert out.returncode == 0, out.stderr
    assert not [line for line in out.stderr.splitlines() if "Warning" in line], out.stderr
