"""The LoRA trainer: one loop for CPU and GPU, resumable, with answer-only loss.

A hand-written loop over accelerate rather than a general trainer, because the job is
narrow and CPU time is precious: logits are computed only at answer positions (the
vocabulary projection of prompt tokens is work nobody uses), batches are bucketed by length
(padding is work too), and the loss is the exact mean over the answer tokens of an
optimizer step, however the step is split into micro-batches.

The same code runs on CPU in float32 and on CUDA in bf16, optionally with a 4-bit base
model (QLoRA, bitsandbytes) and on several GPUs when started through ``accelerate launch``
(``accelerate launch -m tunewise.cli train task.yaml``). Ctrl-C saves a checkpoint
(adapter, optimizer, scheduler, step, RNG) and re-running resumes from it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.task import LoraSpec
from tunewise.training.features import (
    IGNORE,
    Feature,
    collate,
    collate_packed,
    length_batches,
    shard_batches,
)

TRAINER_VERSION = "1"  # bump when training semantics change: part of the adapter cache key
CHECKPOINT = "checkpoint.pt"
LOG_FILE = "training_log.json"
WARMUP_SHARE = 0.05
MAX_GRAD_NORM = 1.0
# Architectures whose logits are exactly lm_head(hidden): safe for the answer-only fast path.
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "granite"}
StepHook = Callable[["LoraTrainer"], None]


@dataclass(frozen=True)
class Speed:
    """How the loop computes, never what: every option leaves the loss and gradients equal
    within float noise (tests/test_lora_speed.py). ``benchmarks/lora_vs_trl.py --variants``
    measures each against TRL (its docstring says what each gave); only ``max_tokens`` is
    on by default, for memory.

    Attributes:
        ce_chunk: fuse the output layer with the loss over this many answer positions at a
            time (None: project all answer positions at once, then the loss).
        compile: ``torch.compile`` the loss module (dynamic shapes).
        pack: put each micro-batch's sequences in one row without padding; position ids
            restart per sequence and attention stays inside each sequence (transformers
            builds the block-diagonal mask from the position ids).
        max_tokens: split a micro-batch whose padded tokens exceed this into equal parts
            run one after the other (None: never). The step's loss and gradient are the
            same (the loss is the mean over the step's answer tokens however it is split),
            but the activations kept for the backward pass, which grow with the tokens of
            one forward pass (about 1.8 MB per token for SmolLM2-135M), are bounded.
    """

    ce_chunk: int | None = None
    compile: bool = False
    pack: bool = False
    max_tokens: int | None = 768


def answer_logits(module: Any, input_ids: Any, attention_mask: Any, labels: Any,
                  position_ids: Any = None) -> tuple[Any, Any, Any]:
    """Logits only at the positions that predict an answer token, with the shifted targets
    and their mask: ``(logits[selected], target, selected)``.

    ``module`` has ``inner`` (the model), ``base`` (its base model) and ``fast`` (the output
    layer is a plain head, so the decoder's hidden states can be projected at the selected
    positions alone instead of through the whole vocabulary at every position).
    """
    target = labels[:, 1:]
    sel = target != IGNORE
    if module.fast:
        hidden = answer_hidden(module, input_ids, attention_mask, sel, position_ids)
        return module.base.get_output_embeddings()(hidden), target, sel
    logits = module.inner(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids).logits
    return logits[:, :-1][sel], target, sel


def answer_hidden(module: Any, input_ids: Any, attention_mask: Any, sel: Any,
                  position_ids: Any = None) -> Any:
    """The decoder's last hidden states at the positions ``sel`` selects (fast path only)."""
    hidden = module.base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                       position_ids=position_ids).last_hidden_state
    return hidden[:, :-1][sel]


def head_cross_entropy(hidden: Any, weight: Any, target: Any, chunk: int) -> Any:
    """Sum of ``cross_entropy(hidden @ weight.T, target)``, ``chunk`` rows at a time.

    The output layer and the loss fused, as Liger-Kernel's fused linear cross-entropy does:
    each chunk's logits (chunk x vocabulary) are made, turned into the loss and into the
    gradients of ``hidden`` (and of ``weight`` when it trains), and dropped, so the
    answer-position logits over the whole vocabulary never exist at once. Gradients are
    computed in the forward pass (no second projection in backward), so the work is the
    same as the unfused head + loss while the peak memory is one chunk's logits.
    """
    import torch

    class FusedHeadLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, h: Any, w: Any, y: Any) -> Any:  # type: ignore[override]
            want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            grad_h = torch.empty_like(h) if want_h else None
            grad_w = torch.zeros_like(w) if want_w else None
            total = h.new_zeros((), dtype=torch.float32)
            for start in range(0, h.shape[0], chunk):
                hc, yc = h[start : start + chunk], y[start : start + chunk]
                logits = (hc @ w.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, yc[:, None]).squeeze(1)).sum()
                if want_h or want_w:
                    # d loss / d logits = softmax - one_hot, computed in place
                    g = logits.sub_(lse[:, None]).exp_()
                    g[torch.arange(len(yc), device=g.device), yc] -= 1
                    g = g.to(h.dtype)
                    if want_h:
                        grad_h[start : start + chunk] = g @ w
                    if want_w:
                        grad_w.addmm_(g.t(), hc)
            ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
            ctx.want = (want_h, want_w)
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:  # type: ignore[override]
            saved = iter(ctx.saved_tensors)
            grad_h = next(saved) * grad_out if ctx.want[0] else None
            grad_w = next(saved) * grad_out if ctx.want[1] else None
            return grad_h, grad_w, None

    return FusedHeadLoss.apply(hidden, weight, target)


def _loss_module(model: Any, ce_chunk: int | None = None) -> Any:
    """Wrap a model (peft, or plain for a full fine-tune) so forward returns (sum of
    answer-token losses, answer tokens). ``ce_chunk``: fuse the output layer with the loss
    over chunks of that many answer positions (plain heads only; see head_cross_entropy)."""
    import torch
    import torch.nn.functional as F

    class AnswerLoss(torch.nn.Module):
        """Logits only where a label exists; accelerate/DDP wrap this module as a whole."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
            self.fast = getattr(base.config, "model_type", "") in PLAIN_HEAD
            self.base = base
            head = base.get_output_embeddings()
            self.fused = bool(ce_chunk) and self.fast and getattr(head, "bias", None) is None

        def forward(self, input_ids: Any, attention_mask: Any, labels: Any,
                    position_ids: Any = None) -> Any:
            if self.fused:
                target = labels[:, 1:]
                sel = target != IGNORE
                hidden = answer_hidden(self, input_ids, attention_mask, sel, position_ids)
                weight = self.base.get_output_embeddings().weight
                return head_cross_entropy(hidden, weight, target[sel], ce_chunk), sel.sum()
            logits, target, sel = answer_logits(self, input_ids, attention_mask, labels,
                                                position_ids)
            loss = F.cross_entropy(logits.float(), target[sel], reduction="sum")
            return loss, sel.sum()

    return AnswerLoss(model)


@contextlib.contextmanager
def _sigint_flag() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C; a second Ctrl-C interrupts at once as usual."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        flag.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a kill never leaves half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: the high-water mark of this
    process's own address space. ``ru_maxrss`` is not used there because Linux carries it
    across ``fork`` + ``exec``, so a trainer started from a large parent (pytest after other
    tests, a notebook) would report the parent's peak instead of its own.
    """
    import resource
    import sys

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


class LoraTrainer:
    """Trains one LoRA adapter on a base model folder and saves it in ``out_dir``.

    With ``full=True`` the same loop trains every weight of the model instead (no adapter)
    and saves the whole model, with its tokenizer, as a loadable model folder.

    Args:
        base_model: a transformers model folder (or hub id when online).
        spec: the task's ``lora:`` settings.
        train: training features; dev: features for the dev loss (early stopping).
        out_dir: where the adapter, its log and the checkpoint go.
        pad_id: the tokenizer's padding id.
        label: shown on the progress bar.
        progress: draw a rich progress bar on stderr.
        log: one-line messages (warnings, resume notices).
        on_step: called after every optimizer step (tests use it to interrupt).
        full: train all weights (a full fine-tune) rather than a LoRA adapter.
        check_memory: refuse, before loading, a model the planner says will not fit.
        speed: how the loop computes (see Speed); never changes the result.
    """

    sequences_per_item = 1  # sequences one training item puts in a batch (a DPO pair: 2)

    def __init__(self, base_model: str, spec: LoraSpec, train: Sequence[Feature],
                 dev: Sequence[Feature], out_dir: Path, pad_id: int, *, label: str = "lora",
                 progress: bool = True, log: Callable[[str], None] = print,
                 on_step: StepHook | None = None, full: bool = False,
                 check_memory: bool = True, speed: Speed = Speed()) -> None:
        if not train:
            raise TunewiseError("no training examples left to train on", field="lora")
        self.base_model = base_model
        self.spec = spec
        self.train_feats = list(train)
        self.dev_feats = list(dev)
        self.out_dir = Path(out_dir)
        self.pad_id = pad_id
        self.label = label
        self.show_progress = progress
        self.log = log
        self.on_step = on_step
        self.full = full
        self.check_memory = check_memory
        self.speed = speed
        self.stop_requested = False
        self.step = 0
        self.last_loss = math.nan

    # ---- setup ------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to checkpoint and stop after the current step (like Ctrl-C)."""
        self.stop_requested = True

    def _load(self) -> None:
        import torch
        from accelerate import Accelerator
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from tunewise.noise import quiet_libraries

        quiet_libraries()
        cuda = torch.cuda.is_available()
        bf16 = cuda and torch.cuda.is_bf16_supported()
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if bf16 else "no")
        self.precision = "bf16" if bf16 else "fp32"
        kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
        if self.spec.qlora and not cuda and not self.full:
            self.log("lora.qlora needs CUDA; training the full-precision model on CPU instead")
        qlora = self.spec.qlora and cuda and not self.full
        if self.check_memory:
            self._check_fits("full" if self.full else "qlora" if qlora else "lora", cuda)
        if qlora:
            try:
                from transformers import BitsAndBytesConfig
            except ImportError:  # pragma: no cover - depends on the install
                raise TunewiseError("lora.qlora needs bitsandbytes: pip install bitsandbytes",
                                    field="lora.qlora") from None
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16)
            kwargs["device_map"] = {"": self.accelerator.local_process_index}
            self.precision = "nf4+" + self.precision
        try:
            model = AutoModelForCausalLM.from_pretrained(self.base_model, **kwargs)
        except (OSError, ImportError) as exc:
            raise TunewiseError(f"cannot load model for training ({exc})".splitlines()[0],
                                field="backend.model") from None
        model = self._prepare_base(model)
        if qlora:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model.config.use_cache = False
        if self.full:  # every weight trainable, no adapter
            self.peft_model = model
            self.params = [p for p in model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.AdamW(self.params, lr=self.spec.lr, weight_decay=0.0)
            self.module = self._prepare_module(model)
            return
        torch.manual_seed(self.spec.seed)  # the adapter's initial weights
        config = LoraConfig(r=self.spec.r, lora_alpha=self.spec.alpha,
                            lora_dropout=self.spec.dropout,
                            target_modules=list(self.spec.target_modules),
                            bias="none", task_type="CAUSAL_LM")
        try:
            self.peft_model = get_peft_model(model, config)
        except ValueError as exc:
            raise TunewiseError(f"{exc}".splitlines()[0], field="lora.target_modules") from None
        self.params = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.spec.lr, weight_decay=0.0)
        self.module = self._prepare_module(self.peft_model)

    def _prepare_module(self, model: Any) -> Any:
        """The loss module, through accelerate, compiled when ``speed.compile`` says so."""
        module = self.accelerator.prepare(self._make_module(model))
        if self.speed.compile:
            import torch

            module = torch.compile(module, dynamic=True)
        return module

    def _prepare_base(self, model: Any) -> Any:
        """The model the adapter is trained on (the DPO trainer merges an SFT adapter in)."""
        return model

    def _make_module(self, model: Any) -> Any:
        """The module the loop calls: forward gives (loss sum, count) for the features."""
        return _loss_module(model, self.speed.ce_chunk)

    def _check_fits(self, method: str, cuda: bool) -> None:
        """The planner's peak-memory estimate against what is free, before any loading."""
        from tunewise.planner import Workload, check_fits

        lengths = [len(f.input_ids) for f in self.train_feats]
        work = Workload(seq_len=max(lengths),
                        batch_size=self.spec.batch_size * self.sequences_per_item,
                        examples=len(lengths), mean_len=sum(lengths) / len(lengths),
                        r=self.spec.r, targets=tuple(self.spec.target_modules))
        check_fits(self.base_model, method, work, "gpu" if cuda else "cpu")

    def _plan(self) -> None:
        """Steps per epoch and in total, from the (deterministic) batch layout."""
        from transformers import get_linear_schedule_with_warmup

        acc = self.accelerator
        self.world, self.rank = acc.num_processes, acc.process_index
        self.lengths = [len(f.input_ids) for f in self.train_feats]
        n_batches = len(self._epoch_batches(0))
        self.steps_per_epoch = max(1, math.ceil(n_batches / self.spec.grad_accum))
        total = self.steps_per_epoch * self.spec.epochs
        if self.spec.max_steps:
            total = min(total, self.spec.max_steps)
        self.total_steps = total
        warmup = max(1, int(WARMUP_SHARE * total)) if total > 1 else 0
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, total)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's micro-batches for an epoch (same on every run: seed + epoch)."""
        batches = length_batches(self.lengths, self.spec.batch_size, self.spec.seed + epoch)
        return shard_batches(batches, self.world, self.rank)

    # ---- checkpoints --------------------------------------------------------------
    def _adapter_state(self) -> dict[str, Any]:
        """The trained weights: the adapter's, or all of them for a full fine-tune."""
        from peft import get_peft_model_state_dict

        model = self.accelerator.unwrap_model(self.module).inner
        if self.full:
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}

    def _set_adapter_state(self, state: dict[str, Any]) -> None:
        from peft import set_peft_model_state_dict

        model = self.accelerator.unwrap_model(self.module).inner
        if self.full:
            model.load_state_dict(state)
            return
        set_peft_model_state_dict(model, state)

    def _save_checkpoint(self) -> None:
        import torch

        if not self.accelerator.is_main_process:
            return
        state = {
            "version": TRAINER_VERSION,
            "adapter": self._adapter_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loop": {"step": self.step, "epoch": self.epoch, "group": self.group,
                     "seconds": self._seconds(), "best_loss": self.best_loss,
                     "bad_epochs": self.bad_epochs},
            "best": self.best_state,
            "log": json.dumps(self.history),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        _atomic_save(state, self.out_dir / CHECKPOINT)

    def _resume(self) -> bool:
        import torch

        path = self.out_dir / CHECKPOINT
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # a torn or foreign file: start over rather than fail
            self.log(f"ignoring unreadable checkpoint {path}")
            return False
        if state.get("version") != TRAINER_VERSION:
            return False
        self._set_adapter_state(state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        loop = state["loop"]
        self.step, self.epoch, self.group = loop["step"], loop["epoch"], loop["group"]
        self.seconds_before = loop["seconds"]
        self.best_loss, self.bad_epochs = loop["best_loss"], loop["bad_epochs"]
        self.best_state = state["best"]
        self.history = json.loads(state["log"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.history["resumed_from_step"].append(self.step)
        self.log(f"{self.label}: resuming from checkpoint at step {self.step}/{self.total_steps}")
        return True

    # ---- the loop -----------------------------------------------------------------
    def _seconds(self) -> float:
        return self.seconds_before + (time.perf_counter() - self.started)

    def dev_loss(self) -> float | None:
        """Mean loss per answer token on the dev features (None without dev examples)."""
        import torch

        if not self.dev_feats:
            return None
        self.module.eval()
        total, count = 0.0, 0
        order = sorted(range(len(self.dev_feats)), key=lambda i: len(self.dev_feats[i].input_ids))
        bs = self.spec.batch_size * 2
        with torch.no_grad():
            for b in range(0, len(order), bs):
                batch = collate([self.dev_feats[i] for i in order[b : b + bs]], self.pad_id)
                batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
                loss, n = self.module(**batch)
                total, count = total + float(loss), count + int(n)
        self.module.train()
        return total / max(count, 1)

    def _stop_now(self, flag: threading.Event) -> bool:
        import torch

        stop = flag.is_set() or self.stop_requested
        if self.world > 1:  # every process must agree, or the next collective hangs
            t = torch.tensor([float(stop)], device=self.accelerator.device)
            stop = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return stop

    def _split(self, mb: list[int]) -> list[list[int]]:
        """``mb`` in equal consecutive parts of at most ``speed.max_tokens`` padded tokens."""
        budget = self.speed.max_tokens
        lengths = [len(self.train_feats[i].input_ids) for i in mb]
        tokens = sum(lengths) if self.speed.pack else max(lengths) * len(mb)
        if not budget or tokens <= budget or len(mb) == 1:
            return [mb]
        parts = min(len(mb), math.ceil(tokens / budget))
        size = math.ceil(len(mb) / parts)
        return [mb[i : i + size] for i in range(0, len(mb), size)]

    def _train_step(self, group: list[list[int]]) -> tuple[float, int, int]:
        """One optimizer step over micro-batches; returns (mean loss, tokens, answer tokens)."""
        group = [part for mb in group for part in self._split(mb)]
        feats = [[self.train_feats[i] for i in mb] for mb in group]
        answer_tokens = sum(f.answer_tokens for mb in feats for f in mb)
        tokens = sum(len(f.input_ids) for mb in feats for f in mb)
        loss_sum = 0.0
        for j, mb in enumerate(feats):
            tensors = collate_packed(mb) if self.speed.pack else collate(mb, self.pad_id)
            batch = {k: v if v is None else v.to(self.accelerator.device)
                     for k, v in tensors.items()}
            sync = j == len(feats) - 1
            ctx = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.module)
            with ctx:
                loss, _ = self.module(**batch)
                self.accelerator.backward(loss / max(answer_tokens, 1))
            loss_sum += float(loss.detach())
        self.accelerator.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / max(answer_tokens, 1), tokens, answer_tokens

    def _progress(self) -> Any:
        from tunewise.files import progress_bar

        return progress_bar(loss=True, transient=True, disable=not (
            self.show_progress and self.accelerator.is_main_process))

    def train(self) -> dict[str, Any]:
        """Train (or resume) to the end; return the training log. Ctrl-C checkpoints first.

        Raises:
            KeyboardInterrupt: after saving a checkpoint, when interrupted.
        """
        import torch

        self.out_dir.mkdir(parents=True, exist_ok=True)
        random.seed(self.spec.seed)
        self._load()
        self._plan()
        torch.manual_seed(self.spec.seed + 1 + self.rank)  # dropout
        self.epoch, self.group, self.seconds_before = 0, 0, 0.0
        self.best_loss, self.bad_epochs, self.best_state = math.inf, 0, None
        self.history: dict[str, Any] = {
            "steps": [], "epochs": [], "examples_seen": 0, "train_tokens": 0,
            "answer_tokens": 0, "resumed_from_step": [],
        }
        self.started = time.perf_counter()
        self._resume()
        self.module.train()
        stopped_early = False
        with _sigint_flag() as flag, self._progress() as bar:
            task = bar.add_task(self.label, total=self.total_steps, completed=self.step,
                                loss="-")
            while self.epoch < self.spec.epochs and self.step < self.total_steps:
                batches = self._epoch_batches(self.epoch)
                ga = self.spec.grad_accum
                groups = [batches[i : i + ga] for i in range(0, len(batches), ga)]
                while self.group < len(groups) and self.step < self.total_steps:
                    loss, tokens, answer = self._train_step(groups[self.group])
                    self.step += 1
                    self.group += 1
                    self.last_loss = loss
                    h = self.history
                    h["examples_seen"] += sum(len(mb) for mb in groups[self.group - 1])
                    h["train_tokens"] += tokens
                    h["answer_tokens"] += answer
                    h["steps"].append({"step": self.step, "epoch": self.epoch,
                                       "loss": round(loss, 5),
                                       "lr": self.scheduler.get_last_lr()[0],
                                       "examples_seen": h["examples_seen"],
                                       "elapsed_s": round(self._seconds(), 3)})
                    bar.update(task, completed=self.step, loss=f"{loss:.3f}")
                    if self.on_step:
                        self.on_step(self)
                    if self._stop_now(flag):
                        self._save_checkpoint()
                        self.log(f"{self.label}: interrupted at step {self.step}; checkpoint "
                                 f"saved, run the same command again to resume")
                        raise KeyboardInterrupt
                    if self.step % self.spec.checkpoint_every == 0:
                        self._save_checkpoint()
                if self.group >= len(groups) or self.step >= self.total_steps:
                    stopped_early = self._end_epoch()
                    if stopped_early:
                        break
        return self._finish(stopped_early)

    def _end_epoch(self) -> bool:
        """Dev loss, best-adapter bookkeeping, early stopping; True means stop."""
        loss = self.dev_loss()
        self.history["epochs"].append({"epoch": self.epoch, "step": self.step,
                                       "dev_loss": loss, "train_loss": self.last_loss})
        self.epoch, self.group = self.epoch + 1, 0
        if loss is None:
            return False
        if loss < self.best_loss:
            self.best_loss, self.bad_epochs = loss, 0
            self.best_state = self._adapter_state() if self.epoch < self.spec.epochs else None
        else:
            self.bad_epochs += 1
            if self.spec.patience and self.bad_epochs >= self.spec.patience:
                self.log(f"{self.label}: dev loss stopped improving; stopping after "
                         f"epoch {self.epoch}")
                return True
        return False

    def _finish(self, stopped_early: bool) -> dict[str, Any]:
        h = self.history
        final_dev = h["epochs"][-1]["dev_loss"] if h["epochs"] else None
        restored = False
        if self.best_state is not None and final_dev is not None and final_dev > self.best_loss:
            self._set_adapter_state(self.best_state)  # keep the epoch with the lowest dev loss
            restored = True
        h.update({
            "done": True,
            "trainer_version": TRAINER_VERSION,
            "steps_done": self.step,
            "total_steps": self.total_steps,
            "epochs_done": self.epoch,
            "stopped_early": stopped_early,
            "restored_best_epoch": restored,
            "final_loss": self.last_loss,
            "dev_loss": self.best_loss if restored else final_dev,
            "train_seconds": round(self._seconds(), 3),
            "n_train": len(self.train_feats),
            "n_dev": len(self.dev_feats),
            "device": str(self.accelerator.device),
            "processes": self.world,
            "precision": self.precision,
            "method": "full" if self.full else "lora",
            "trainable_params": sum(p.numel() for p in self.params),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "config": self.spec.model_dump(mode="json"),
        })
        if self.accelerator.device.type == "cuda":
            import torch

            h["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.module).inner
            model.save_pretrained(self.out_dir)
            if self.full:  # a full model folder is loadable on its own: add the tokenizer
                from transformers import AutoTokenizer

                AutoTokenizer.from_pretrained(self.base_model).save_pretrained(self.out_dir)
            h["artefact_bytes"] = sum(f.stat().st_size for f in self.out_dir.iterdir()
                                      if f.is_file() and f.suffix in (".safetensors", ".bin"))
            write_json(self.out_dir / LOG_FILE, h)
            (self.out_dir / CHECKPOINT).unlink(missing_ok=True)
        return h
