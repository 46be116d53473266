"""The planner where users meet it: `tunewise doctor` says what this machine can fine-tune,
and a run refuses a model too large for the memory in one line naming the task file line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import e2e_rows, write_jsonl
from typer.testing import CliRunner

from tunewise import planner
from tunewise.cli import app


def _fine_tuning(*args: str) -> list[dict]:
    result = CliRunner().invoke(app, ["doctor", "--json", *args])
    assert "Traceback" not in result.output
    checks = json.loads(result.stdout)["checks"]
    return [c for c in checks if c["name"].startswith("fine-tuning")]


def _typical() -> planner.Workload:
    return planner.Workload(seq_len=128, batch_size=8, examples=500, mean_len=80)


def test_doctor_without_gpu_gives_the_cpu_time_of_the_bundled_model(monkeypatch) -> None:
    monkeypatch.setattr(planner, "has_gpu", lambda: False)
    monkeypatch.setattr(planner, "available_bytes", lambda device: 64 * planner.GB)
    [check] = _fine_tuning()
    assert check["name"] == "fine-tuning smollm2-135m" and check["status"] == "ok"
    shape = planner.quick_shape("smollm2-135m")
    est = planner.estimate(shape, "lora", _typical(), "cpu")
    minutes = planner.fmt_duration(est.epoch_seconds["cpu"])
    detail = check["detail"]
    assert detail.startswith("no GPU: fine-tuning a 7B model is out")
    assert f"LoRA-trains on CPU in about {minutes} an epoch on 500 examples" in detail
    assert f"~{est.total / planner.GB:.1f} GB RAM" in detail


def test_doctor_with_a_task_plans_its_model_at_its_sizes(make_task, monkeypatch) -> None:
    monkeypatch.setattr(planner, "has_gpu", lambda: False)
    monkeypatch.setattr(planner, "available_bytes", lambda device: 64 * planner.GB)
    path = make_task(e2e_rows(120), kind="extraction",
                     backend={"kind": "local", "model": "smollm2-135m"},
                     split={"test": 30, "dev": 10, "seed": 0}, lora={"batch_size": 4})
    [check] = _fine_tuning("--task", str(path))
    assert "on 80 examples" in check["detail"]  # 120 rows - 30 test - 10 dev
    from tunewise.task import load_task

    work = planner.workload_for_task(load_task(path), tokenize=False)
    assert work.batch_size == 4 and work.examples == 80
    assert check["detail"] == planner.cpu_training_line("smollm2-135m", workload=work)


def test_doctor_warns_when_the_model_would_not_fit_in_ram(monkeypatch) -> None:
    monkeypatch.setattr(planner, "has_gpu", lambda: False)
    monkeypatch.setattr(planner, "available_bytes", lambda device: 0.5 * planner.GB)
    [check] = _fine_tuning()
    assert check["status"] == "warn"
    assert "only 0.5 GB RAM is available: training would be refused" in check["detail"]
    assert "lora.batch_size" in check["fix"]


def test_doctor_with_a_gpu_says_which_methods_fit(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(planner, "has_gpu", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (20 * planner.GB,
                                                                24 * planner.GB))
    [check] = _fine_tuning()
    detail = check["detail"]
    assert check["status"] == "ok" and detail.startswith("GPU with 24 GB: ")
    seven = planner.KNOWN["llama-2-7b"]
    full = planner.estimate(seven, "full", _typical(), "gpu").total / planner.GB
    qlora = planner.estimate(seven, "qlora", _typical(), "gpu").total / planner.GB
    assert full > 24 > qlora
    assert f"a 7B model: full ~{full:.0f} GB does not fit" in detail
    assert f"qlora ~{qlora:.0f} GB fits" in detail
    assert "smollm2-135m (135M): full ~" in detail


def test_doctor_with_a_served_model_has_nothing_to_tune(make_task) -> None:
    [check] = _fine_tuning("--task", str(make_task()))  # the dummy backend
    assert check["status"] == "ok" and "nothing to fine-tune here" in check["detail"]


def _tiny_task(folder: Path, model: Path, models: bool) -> tuple[Path, int]:
    """A task file written by hand, so the test knows the line of the model."""
    write_jsonl(folder / "data.jsonl", e2e_rows(130))
    if models:
        head = ("models:\n"
                "  small:\n"
                "    kind: local\n"
                f"    model: {model}\n"
                "    price: local-cpu\n")
        line = 4
    else:
        head = ("backend:\n"
                "  kind: local\n"
                f"  model: {model}\n")
        line = 3
    text = head + ("name: e2e-tiny\n"
                   "kind: extraction\n"
                   "data: {path: data.jsonl}\n"
                   "target: 0.5\n"
                   "split: {test: 10, dev: 10, seed: 0}\n"
                   "lora: {epochs: 1, batch_size: 8, curve: []}\n")
    path = folder / "task.yaml"
    path.write_text(text)
    return path, line


@pytest.mark.parametrize("models", [False, True])
def test_a_model_too_large_is_refused_naming_the_task_file_line(
        tmp_path: Path, tiny_model: Path, monkeypatch, models: bool) -> None:
    import transformers

    path, line = _tiny_task(tmp_path, tiny_model, models)
    monkeypatch.setattr(planner, "available_bytes", lambda device: 1e6)
    monkeypatch.setattr(planner, "check_serving", lambda *a, **k: None)  # the trainer's turn
    real = transformers.AutoModelForCausalLM.from_pretrained
    loads: list[str] = []

    def counting(*a, **k):  # the trainer's loader (the backend loads its own way)
        loads.append(str(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", counting)
    out = CliRunner().invoke(app, ["run", str(path), "--rungs", "lora"])
    assert out.exit_code == 2, out.output
    field = "models.small.model" if models else "backend.model"
    lines = [x for x in out.output.splitlines() if x.strip()]
    error = next(x for x in lines if "GB is available" in x)
    assert error.startswith(f"error: {path}:{line}: {field}: {tiny_model} ("), error
    assert "only 0.0 GB is available" in error and "to lora fine-tune on cpu" in error
    assert "weights 0.0" in error and "batch 8 x" in error
    assert "Traceback" not in out.output
    assert loads == []  # refused before the trainer loads the model


def test_doctor_with_unreadable_task_data_warns_instead_of_failing(make_task) -> None:
    path = make_task(backend={"kind": "local", "model": "smollm2-135m"})
    (path.parent / "data.jsonl").write_text("{not json\n")
    [check] = _fine_tuning("--task", str(path))
    assert check["status"] == "warn"
    assert check["detail"].startswith("cannot size the training data: ")
    assert "data.jsonl:1" in check["detail"]


def test_a_model_too_large_to_answer_is_refused_before_its_weights_load(
        tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    import transformers

    path, line = _tiny_task(tmp_path, tiny_model, models=True)
    monkeypatch.setattr(planner, "available_bytes", lambda device: 1e6)

    def no_loading(*a, **k):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    out = CliRunner().invoke(app, ["run", str(path), "--rungs", "zero_shot"])
    assert out.exit_code == 2, out.output
    error = out.output.strip()
    assert "\n" not in error and "Traceback" not in error
    assert error.startswith(f"error: {path}:{line}: models.small.model: {tiny_model} ("), error
    assert "to answer on cpu (fp32 weights 0.0" in error and "only 0.0 GB is available" in error
    assert not (tmp_path / "runs").exists()  # refused while planning: nothing ran


def test_serving_check_passes_what_fits_and_names_the_numbers() -> None:
    from tunewise.errors import TunewiseError

    assert planner.check_serving("Llama-2-7B", 8, available=64 * planner.GB) is not None
    with pytest.raises(TunewiseError) as err:
        planner.check_serving("Llama-2-7B", 8, available=16 * planner.GB)
    weights = planner.KNOWN["llama-2-7b"].params * 4 / planner.GB
    assert f"fp32 weights {weights:.1f}" in str(err.value)
    assert planner.check_serving("no-such/model", 8, available=1.0) is None
