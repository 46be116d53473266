"""Adapters in a content-addressed cache: train once, reload everywhere.

The key is a hash of the base model id, the LoRA/training settings and the exact token ids
of the training and dev examples. The same task trained twice, a re-run after Ctrl-C, and
``tunewise predict --rung lora`` all arrive at the same folder: a finished adapter is
loaded, a half-trained one resumes from its checkpoint, and nothing is trained twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.files import user_path
from tunewise.task import LoraSpec
from tunewise.training.features import Feature, fingerprint
from tunewise.training.lora import CHECKPOINT, LOG_FILE, TRAINER_VERSION, LoraTrainer

# Settings that change the trained weights (checkpoint cadence and the checks do not).
TRAINING_FIELDS = {"r", "alpha", "dropout", "target_modules", "epochs", "lr", "batch_size",
                   "grad_accum", "max_steps", "patience", "max_length", "seed", "qlora"}


def adapter_root() -> Path:
    """``$TUNEWISE_ADAPTERS``, else ``$TUNEWISE_HOME/adapters``, else the user cache dir."""
    return user_path("TUNEWISE_ADAPTERS", "adapters", cache=True)


def adapter_key(base_id: str, spec: LoraSpec, train: Sequence[Feature],
                dev: Sequence[Feature], full: bool = False) -> str:
    """Content address of an adapter (or fully tuned model, ``full``): model, settings, and
    the data it learns from."""
    settings = spec.model_dump(mode="json", include=TRAINING_FIELDS)
    parts: list[Any] = [TRAINER_VERSION, base_id, settings, fingerprint(train), fingerprint(dev)]
    if full:
        parts.append("full")
    blob = json.dumps(parts, sort_keys=True)
    return ("full-" if full else "lora-") + hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class Adapter:
    """A finished adapter folder, its training log, and whether this call trained it."""

    path: Path
    key: str
    log: dict[str, Any]
    trained_now: bool

    @property
    def train_seconds(self) -> float:
        """Measured training time (summed over resumes), whoever trained it."""
        return float(self.log.get("train_seconds", 0.0))


def finished(path: Path) -> dict[str, Any] | None:
    """The training log of a finished adapter folder, or None."""
    log_path = path / LOG_FILE
    if not log_path.is_file():  # written last, after the adapter weights
        return None
    try:
        log = json.loads(log_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return log if log.get("done") else None


def train_or_load(base_id: str, base_path: str, spec: LoraSpec, train: Sequence[Feature],
                  dev: Sequence[Feature], pad_id: int, *, label: str = "lora",
                  progress: bool = True, log: Callable[[str], None] = print,
                  on_step: Callable[[LoraTrainer], None] | None = None,
                  full: bool = False, before: Callable[[], None] | None = None) -> Adapter:
    """The cached adapter for this data and these settings, training (or resuming) if needed.

    A file lock keeps two processes from training the same adapter at once; the second
    waits and then loads what the first trained. ``full`` trains every weight instead of an
    adapter (the folder then holds a whole model). ``before`` runs only when training
    will start (the caller frees its own copy of the model there).
    """
    key = adapter_key(base_id, spec, train, dev, full)
    return cached_training(key, lambda path: LoraTrainer(
        base_path, spec, train, dev, path, pad_id, label=label, progress=progress, log=log,
        on_step=on_step, full=full), before)


def cached_training(key: str, make_trainer: Callable[[Path], LoraTrainer],
                    before: Callable[[], None] | None = None) -> Adapter:
    """The finished training under ``key``, or a new one by ``make_trainer(path).train()``.

    A file lock keeps two processes from training the same key at once; the second waits
    and then loads what the first trained. ``before`` is called just before training;
    the trainer (its model copy, optimizer, activations) is freed as soon as it is done.
    """
    from filelock import FileLock

    from tunewise.backends.local import free_memory

    path = adapter_root() / key
    done = finished(path)
    if done is not None:
        return Adapter(path, key, done, False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        done = finished(path)
        if done is not None:
            return Adapter(path, key, done, False)
        if before is not None:
            before()
        trainer = make_trainer(path)
        try:
            history = trainer.train()
        finally:
            del trainer
            free_memory()
    return Adapter(path, key, history, True)


# ---- the same training, recognised from its text alone -----------------------------------
MEMO_DIR = "by-text"


def text_key(base_id: str, spec: LoraSpec, train: Sequence[tuple[Any, Any]],
             dev: Sequence[tuple[Any, Any]], full: bool = False) -> str:
    """Key of a training from what it is made of before tokenizing: the base model id,
    the settings and the (prompt messages, answer) pairs. The token ids the adapter key
    hashes are a function of these and the model's tokenizer (named by ``base_id``), so
    equal text keys mean equal adapter keys, and a re-run can find its adapter without
    loading the tokenizer (which would import torch)."""
    settings = spec.model_dump(mode="json", include=TRAINING_FIELDS)
    blob = json.dumps([TRAINER_VERSION, base_id, settings, list(train), list(dev), full],
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def recall(key: str) -> tuple[Adapter, int] | None:
    """The finished adapter remembered under a text key, with its count of examples skipped
    as too long; None when unknown or no longer finished (then train_or_load decides)."""
    memo = adapter_root() / MEMO_DIR / f"{key}.json"
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
        path = adapter_root() / data["adapter_key"]
        skipped = int(data["skipped"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    log = finished(path)
    return None if log is None else (Adapter(path, data["adapter_key"], log, False), skipped)


def remember(key: str, adapter: Adapter, skipped: int) -> None:
    """Note which adapter the text key ``key`` tokenized to (written atomically)."""
    folder = adapter_root() / MEMO_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{key}.json.tmp"
    tmp.write_text(json.dumps({"adapter_key": adapter.key, "skipped": skipped}),
                   encoding="utf-8")
    os.replace(tmp, folder / f"{key}.json")


def remembered(key: str, train: Callable[[], tuple[Adapter, int]]) -> tuple[Adapter, int]:
    """The training found again from its text key ``key`` (no tokenizer, no torch), else
    ``train()`` (tokenize, then train or load by token key), noted under ``key``."""
    known = recall(key)
    if known is not None:
        return known
    adapter, skipped = train()
    remember(key, adapter, skipped)
    return adapter, skipped


def copy_adapter(adapter: Adapter, dest: Path) -> Path:
    """Copy a finished adapter and its log into a run's folder (the per-run record).

    Files are hard-linked where the file system allows (a fully tuned model is as large as
    the model, and a finished cache folder is never written again), else copied.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for item in adapter.path.iterdir():
        if item.is_file() and not item.name.startswith(CHECKPOINT):
            target = dest / item.name
            target.unlink(missing_ok=True)
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)
    return dest
