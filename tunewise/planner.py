"""Memory and time planner: will this model fine-tune (or serve) on this hardware?

Answers before anything is loaded, from the model's config alone (hidden size, layers,
heads, vocabulary), so it works for hub models whose weights are not here. Memory is
split the way the trainer spends it:

- **weights**: every parameter in the working dtype (4-bit NF4 for QLoRA's frozen linears);
- **gradients** and **optimizer states** (AdamW: two moments) of the *trainable*
  parameters only: all of them for a full fine-tune, the adapter's for LoRA;
- **activations** kept for the backward pass, per token and layer (constants below,
  calibrated against the trainer on this machine, see ``tests/test_planner.py``);
- **runtime**: the process itself (Python, torch, tokenizer) on CPU, the CUDA context on a GPU.

Time per epoch is the usual 2 FLOPs per parameter per token forward, twice that backward
for a full fine-tune (weight and activation gradients) and once for LoRA (activation
gradients only), over an assumed sustained throughput. Every assumption is printed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError

GB = 1024**3
GPU_SIZES_GB = (16, 24, 40, 80)
# A representative card per memory size and its dense bf16 peak (TFLOP/s, vendor sheets).
GPU_CARDS = {16: ("T4", 65.0), 24: ("A10G", 125.0), 40: ("A100-40GB", 312.0),
             80: ("A100-80GB", 312.0)}
MFU = 0.35  # share of peak FLOP/s a fine-tuning loop sustains (typical 30-45%)
QLORA_SLOWDOWN = 0.7  # dequantizing NF4 weights on every matmul costs throughput
# Sustained fp32 training GFLOP/s per CPU core: SmolLM2-135M on this (shared) machine
# trained 47 tokens/s LoRA and 26 tokens/s full on one thread, i.e. 19-23 GFLOP/s.
CPU_GFLOPS_PER_CORE = 20.0
CPU_RUNTIME_GB = 0.55  # RSS of Python + torch + transformers + tokenizer, measured here
GPU_RUNTIME_GB = 1.0  # CUDA context and allocator slack
NF4_BITS = 4.127  # QLoRA paper: 4-bit NormalFloat + double-quantized constants (0.127 bits)
ANSWER_SHARE = 0.5  # share of tokens that are answer tokens (logits are computed only there)
# Activation elements kept per token and layer, as multiples of (hidden, kv width,
# intermediate): q/k/v/o inputs and outputs, rotary copies, SDPA outputs, the two norms,
# and the SwiGLU MLP's gate, up, activation and product. Calibrated on SmolLM2-135M (batch
# 8 x 107 tokens): predicted peak RSS 2.51 vs 2.51 GiB measured (LoRA), 3.50 vs 3.54 (full).
ACT = (10.0, 4.0, 4.0)
METHODS = ("full", "lora", "qlora", "serve")


@dataclass(frozen=True)
class ModelShape:
    """The numbers in a model's config that decide its memory."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    head_dim: int = 0
    source: str = ""

    @property
    def hd(self) -> int:
        """Per-head width (``head_dim`` when the config gives it)."""
        return self.head_dim or self.hidden // self.heads

    @property
    def kv_width(self) -> int:
        """Width of the key (and the value) projection: grouped-query attention shrinks it."""
        return self.kv_heads * self.hd

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer: attention, SwiGLU MLP, two RMS norms."""
        h, q = self.hidden, self.heads * self.hd
        attn = h * q + 2 * h * self.kv_width + q * h
        return attn + 3 * h * self.intermediate + 2 * h

    @property
    def embed_params(self) -> int:
        """Input embeddings, plus the output head when it is not tied to them."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        """All parameters, from the config (matches the published counts within ~1%)."""
        return self.layers * self.layer_params + self.embed_params + self.hidden

    def lora_params(self, r: int, targets: tuple[str, ...]) -> int:
        """Adapter parameters: r x (in + out) per targeted projection and layer."""
        h, q, kv, i = self.hidden, self.heads * self.hd, self.kv_width, self.intermediate
        shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                  "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return self.layers * sum(r * sum(shapes[t]) for t in targets if t in shapes)


# Published configs (the models' config.json on the Hugging Face hub).
KNOWN: dict[str, ModelShape] = {
    s.name.lower(): s for s in (
        ModelShape("Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, True,
                   source="Qwen/Qwen2.5-0.5B config.json"),
        ModelShape("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, False,
                   source="Qwen/Qwen2.5-7B config.json"),
        ModelShape("Llama-2-7B", 4096, 32, 32, 32, 11008, 32000, False,
                   source="meta-llama/Llama-2-7b-hf config.json"),
        ModelShape("Llama-3-8B", 4096, 32, 32, 8, 14336, 128256, False,
                   source="meta-llama/Meta-Llama-3-8B config.json"),
        ModelShape("LLaMA-65B", 8192, 80, 64, 64, 22016, 32000, False,
                   source="LLaMA paper (Touvron et al. 2023), the model of the QLoRA paper"),
        ModelShape("Llama-3-70B", 8192, 80, 64, 8, 28672, 128256, False,
                   source="meta-llama/Meta-Llama-3-70B config.json"),
    )
}
ALIASES = {"0.5b": "qwen2.5-0.5b", "7b": "llama-2-7b", "8b": "llama-3-8b",
           "65b": "llama-65b", "70b": "llama-3-70b"}


def shape_from_config(config: dict[str, Any], name: str, source: str) -> ModelShape:
    """A shape from a transformers ``config.json`` (Llama, Qwen2, Mistral style keys)."""
    try:
        heads = int(config["num_attention_heads"])
        return ModelShape(
            name, int(config["hidden_size"]), int(config["num_hidden_layers"]), heads,
            int(config.get("num_key_value_heads") or heads), int(config["intermediate_size"]),
            int(config["vocab_size"]), bool(config.get("tie_word_embeddings", False)),
            int(config.get("head_dim") or 0), source)
    except (KeyError, TypeError, ValueError) as exc:
        raise TunewiseError(f"model config lacks {exc}; cannot plan its memory",
                            path=source, field="backend.model") from None


def shape_from_size(params: float) -> ModelShape:
    """A Llama-like shape with ``params`` parameters: the nearest published shape by size,
    with its layer count scaled to match (the planner says it assumed this)."""
    if not params > 0:
        raise TunewiseError(f"model size must be positive, got {params}", field="--params")
    near = min(KNOWN.values(), key=lambda s: abs(math.log(s.params / params)))
    layers = max(1, round((params - near.embed_params) / near.layer_params))
    return replace(near, name=f"{params / 1e9:.3g}B", layers=layers,
                   source=f"size only: shape of {near.name} with {layers} layers")


def parse_size(text: str) -> float | None:
    """``7e9``, ``7b``, ``135m``, ``0.5B`` as a parameter count; None if not a size."""
    t = text.strip().lower()
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}.get(t[-1:], 1.0)
    try:
        value = float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        return None
    return value if value >= 1e6 else None


def resolve_shape(model: str, convert: bool = True) -> ModelShape:
    """A shape for a model name: bundled model, a known published config, a local folder
    or cached hub config, or a size such as ``7b``. ``convert=False`` never converts the
    bundled model (which imports torch): the advisor must stay fast.

    Raises:
        TunewiseError: nothing describes the model (no weights are ever downloaded).
    """
    key = model.strip().lower()
    if key in ALIASES and key not in KNOWN:
        return KNOWN[ALIASES[key]]
    if key in KNOWN:
        return KNOWN[key]
    for shape in KNOWN.values():  # hub ids: meta-llama/Meta-Llama-3-8B -> llama-3-8b
        if key.split("/")[-1].replace("meta-", "") == shape.name.lower():
            return shape
    folder = _config_folder(model, convert)
    if folder is not None:
        path = folder / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        return shape_from_config(config, model, str(path))
    size = parse_size(model)
    if size is not None:
        return shape_from_size(size)
    known = ", ".join(s.name for s in KNOWN.values())
    raise TunewiseError(f"unknown model '{model}': give a model folder, a bundled model, one "
                        f"of {known}, or a size such as 7b", field="--model")


def _config_folder(model: str, convert: bool = True) -> Path | None:
    """The folder holding the model's config.json, without downloading anything."""
    if Path(model).joinpath("config.json").is_file():
        return Path(model)
    from tunewise.backends.local import BUNDLED

    if model in BUNDLED:
        from tunewise.backends.local import cache_dir

        folder = cache_dir() / model
        if (folder / "config.json").is_file():
            return folder
        if not convert:
            return None
        from tunewise.backends.local import resolve_model  # converts the bundled GGUF once

        return Path(resolve_model(model))
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    hit = try_to_load_from_cache(model, "config.json")
    return Path(hit).parent if isinstance(hit, str) else None


@dataclass
class Workload:
    """What one training (or serving) process handles at a time."""

    seq_len: int = 512
    batch_size: int = 8
    examples: int = 1000  # per epoch
    mean_len: float | None = None  # mean tokens per example (default: seq_len / 2)
    r: int = 8
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    checkpointing: bool = False  # gradient checkpointing: keep layer inputs only


@dataclass
class Estimate:
    """One method on one device: memory by component (bytes), time per epoch (seconds)."""

    method: str
    device: str  # cpu | gpu
    precision: str
    weights: float
    gradients: float
    optimizer: float
    activations: float
    runtime: float
    trainable: int
    flops_per_token: float
    epoch_tokens: float
    fits: dict[str, bool] = field(default_factory=dict)
    epoch_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        """Peak memory during a step. The trainer frees gradients after every optimizer
        step (``zero_grad(set_to_none=True)``) and backward frees activations as it fills
        gradients, so the two peak at different moments: the larger of them counts."""
        return (self.weights + self.optimizer + max(self.gradients, self.activations)
                + self.runtime)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, memory in GiB."""
        d = asdict(self)
        for k in ("weights", "gradients", "optimizer", "activations", "runtime"):
            d[k] = round(d[k] / GB, 3)
        d["total"] = round(self.total / GB, 3)
        return d


def activation_bytes(shape: ModelShape, w: Workload, method: str, dtype_bytes: float) -> float:
    """Activations a training step keeps for backward, plus the answer-token logits."""
    tokens = w.seq_len * w.batch_size
    logits = tokens * ANSWER_SHARE * shape.vocab * 4 * 3  # fp32 logits, softmax, gradient
    if method == "serve":
        kv_cache = 2 * shape.layers * shape.kv_width * tokens * dtype_bytes
        return kv_cache + tokens * shape.vocab * 4 / w.seq_len  # last-position logits
    a_h, a_kv, a_i = ACT
    per_layer = (a_h * shape.hidden + a_kv * shape.kv_width + a_i * shape.intermediate)
    if w.checkpointing:  # layer inputs for all layers, one layer's activations at a time
        kept = tokens * (shape.layers * shape.hidden + per_layer)
    else:
        kept = tokens * shape.layers * per_layer
    return kept * dtype_bytes + logits


def estimate(shape: ModelShape, method: str, w: Workload, device: str = "gpu",
             fp32: bool = False) -> Estimate:
    """Memory and time of ``method`` (full | lora | qlora | serve) on ``device`` (cpu | gpu).

    The precisions are the trainer's: float32 on CPU; bfloat16 weights on a GPU, with AdamW
    keeping its moments in the parameters' dtype (so a full bf16 fine-tune needs 8 bytes a
    parameter: weights 2, gradients 2, moments 4) and LoRA's adapter weights in float32
    (peft upcasts them). QLoRA stores the frozen linear layers in 4-bit NF4. ``fp32``
    plans a float32 run on a GPU too (16 bytes a parameter for a full fine-tune), the
    setting of the PEFT README's memory table.
    """
    if method not in METHODS:
        raise TunewiseError(f"unknown method '{method}' (one of {', '.join(METHODS)})")
    if method == "qlora" and device == "cpu":
        raise TunewiseError("QLoRA needs CUDA (bitsandbytes)", field="lora.qlora")
    wb = 4.0 if device == "cpu" or fp32 else 2.0
    precision = "fp32" if wb == 4.0 else "bf16"
    p = shape.params
    if method == "qlora":
        linear = shape.layers * (shape.layer_params - 2 * shape.hidden)
        weights = linear * NF4_BITS / 8 + (p - linear) * wb
        precision = f"nf4+{precision}"
    else:
        weights = p * wb
    if method == "full":
        trainable, grad_b, state_b = p, wb, 2 * wb
    elif method in ("lora", "qlora"):
        trainable, grad_b, state_b = shape.lora_params(w.r, w.targets), 4.0, 8.0
    else:
        trainable, grad_b, state_b = 0, 0.0, 0.0
    acts = activation_bytes(shape, w, method, wb)
    runtime = (CPU_RUNTIME_GB if device == "cpu" else GPU_RUNTIME_GB) * GB
    flops = flops_per_token(shape, w, method)
    mean_len = w.mean_len or w.seq_len / 2
    est = Estimate(method, device, precision, weights, trainable * grad_b, trainable * state_b,
                   acts, runtime, trainable, flops, w.examples * mean_len)
    if method != "serve":
        if device == "cpu":
            est.epoch_seconds["cpu"] = est.epoch_tokens * flops / (cpu_gflops() * 1e9)
        else:
            for size, (_card, tflops) in GPU_CARDS.items():
                rate = tflops * 1e12 * MFU * (QLORA_SLOWDOWN if method == "qlora" else 1.0)
                est.epoch_seconds[f"{size}GB"] = est.epoch_tokens * flops / rate
    if device == "gpu":
        est.fits = {f"{size}GB": est.total <= size * GB for size in GPU_SIZES_GB}
    return est


def cpu_gflops() -> float:
    """Sustained training GFLOP/s of this machine's CPU cores (per-core figure x cores)."""
    import os

    return CPU_GFLOPS_PER_CORE * (os.cpu_count() or 1)


def flops_per_token(shape: ModelShape, w: Workload, method: str) -> float:
    """Training FLOPs per token: 2 per weight forward (plus attention and the answer-token
    head), x3 with a full backward, x2 when frozen weights need no weight gradients."""
    body = shape.layers * shape.layer_params
    attention = 2 * shape.layers * w.seq_len * shape.heads * shape.hd  # causal: half of 4
    head = ANSWER_SHARE * shape.vocab * shape.hidden
    forward = 2 * (body + head) + attention
    return forward * {"full": 3.0, "lora": 2.0, "qlora": 2.0, "serve": 1.0}[method]


def plan(shape: ModelShape, w: Workload) -> list[Estimate]:
    """Every method on a GPU, and the ones a CPU can run (no QLoRA there)."""
    out = [estimate(shape, m, w, "gpu") for m in METHODS]
    out += [estimate(shape, m, w, "cpu") for m in ("full", "lora", "serve")]
    return out


def assumptions(shape: ModelShape, w: Workload) -> list[str]:
    """What the numbers rest on, printed with them."""
    return [
        f"model {shape.name}: {shape.params / 1e9:.3f}B parameters, hidden {shape.hidden}, "
        f"{shape.layers} layers, {shape.heads} heads ({shape.kv_heads} key/value), MLP "
        f"{shape.intermediate}, vocabulary {shape.vocab} (from {shape.source or 'config'})",
        f"workload: batch {w.batch_size} x {w.seq_len} tokens at peak, {w.examples} examples "
        f"an epoch of ~{w.mean_len or w.seq_len / 2:.0f} tokens; LoRA r={w.r} on "
        f"{', '.join(w.targets)}; gradient checkpointing {'on' if w.checkpointing else 'off'}",
        "precision: fp32 on CPU; bf16 on GPU with AdamW moments in bf16 (full: 8 bytes a "
        "parameter) and LoRA weights, gradients and moments in fp32; QLoRA frozen linears "
        f"in NF4 ({NF4_BITS} bits a parameter, QLoRA paper)",
        f"activations: {ACT} x (hidden, kv width, MLP) values per token and layer, calibrated "
        f"on this machine; logits only at answer tokens (~{ANSWER_SHARE:.0%}); peak = weights "
        f"+ optimizer + the larger of gradients and activations (gradients are freed every step)",
        f"runtime: {CPU_RUNTIME_GB} GB process on CPU, {GPU_RUNTIME_GB} GB CUDA context",
        f"time: 6 (full) / 4 (LoRA) FLOPs per parameter and token; GPUs at {MFU:.0%} of "
        f"bf16 peak ({', '.join(f'{k} GB {c} {t:g} TFLOP/s' for k, (c, t) in GPU_CARDS.items())}"
        f"), QLoRA x{QLORA_SLOWDOWN}; CPU at {CPU_GFLOPS_PER_CORE:g} GFLOP/s a core x "
        f"{cpu_gflops() / CPU_GFLOPS_PER_CORE:.0f} cores (measured on this machine)",
        "serving: bf16 (fp32 on CPU) weights plus the key/value cache for the batch",
    ]


def workload_for_task(task: Any, shape_model: str | None = None,
                      tokenize: bool = True) -> Workload:
    """Sequence length, batch size and epoch size from a task and its training data.

    Token counts come from the local model's tokenizer when the task's model is local
    (and ``tokenize``), else from characters / 4 (said in the assumptions through
    ``mean_len``). ``tokenize=False`` keeps ``doctor`` fast: no tokenizer, no conversion.
    """
    from tunewise.dataset import load_examples, make_split

    examples = load_examples(task)
    split = make_split(examples, task)
    texts = [e.input + " " + e.output for e in split.train] or ["x"]
    lengths = [len(t) / 4 + 20 for t in texts]  # +20: chat template around the turn
    if tokenize and task.backend.kind == "local":
        try:
            from transformers import AutoTokenizer

            from tunewise.backends.local import resolve_model

            tok = AutoTokenizer.from_pretrained(resolve_model(shape_model or task.backend.model))
            lengths = [len(tok(t).input_ids) + 20 for t in texts]
        except (OSError, ValueError, TunewiseError):
            pass
    spec = task.lora
    longest = min(int(max(lengths)), spec.max_length)
    return Workload(seq_len=longest, batch_size=spec.batch_size, examples=len(split.train),
                    mean_len=sum(lengths) / len(lengths), r=spec.r,
                    targets=tuple(spec.target_modules))


def available_bytes(device: str) -> float:
    """Memory this process may still use: free GPU memory, or the kernel's MemAvailable."""
    if device == "gpu":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return float(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_fits(model_path: str, method: str, w: Workload, device: str,
               available: float | None = None) -> Estimate | None:
    """Refuse, before loading, a model the planner says cannot train in this memory.

    Returns the estimate (None when the config cannot be read: then nothing is refused).

    Raises:
        TunewiseError: predicted peak memory exceeds what is available.
    """
    try:
        shape = resolve_shape(model_path)
    except (TunewiseError, OSError, ValueError):
        return None
    est = estimate(shape, method, w, device)
    free = available_bytes(device) if available is None else available
    if est.total > free:
        raise TunewiseError(
            f"{shape.name} ({size_label(shape.params)} parameters) needs about "
            f"{est.total / GB:.1f} GB to {method} fine-tune on {device} (weights "
            f"{est.weights / GB:.1f}, gradients {est.gradients / GB:.1f}, optimizer "
            f"{est.optimizer / GB:.1f}, activations {est.activations / GB:.1f} GB at batch "
            f"{w.batch_size} x {w.seq_len} tokens) but only {free / GB:.1f} GB is available: "
            f"use a smaller model, LoRA/QLoRA, or a smaller lora.batch_size "
            f"(tunewise plan --model ...)", field="backend.model")
    return est


def check_serving(model: str, batch_size: int, seq_len: int = 1024,
                  available: float | None = None) -> Estimate | None:
    """Refuse, before its weights are loaded, a local model that cannot even answer in this
    memory (the local backend loads float32 weights; a 7B model needs ~28 GB of them).

    Returns the estimate (None when nothing describes the model: then nothing is refused).

    Raises:
        TunewiseError: the predicted peak exceeds what is available.
    """
    try:
        shape = resolve_shape(model, convert=False)  # a bundled model is small: no check
    except (TunewiseError, OSError, ValueError):
        return None
    device = "gpu" if has_gpu() else "cpu"
    w = Workload(seq_len=seq_len, batch_size=batch_size)
    est = estimate(shape, "serve", w, device, fp32=True)
    free = available_bytes(device) if available is None else available
    if est.total > free:
        raise TunewiseError(
            f"{shape.name} ({size_label(shape.params)} parameters) needs about "
            f"{est.total / GB:.1f} GB to answer on {device} (fp32 weights "
            f"{est.weights / GB:.1f}, key/value cache and logits {est.activations / GB:.1f} "
            f"GB at batch {batch_size} x {seq_len} tokens) but only {free / GB:.1f} GB is "
            f"available: use a smaller model, or serve a quantized one through a server "
            f"(kind: openai, e.g. llama.cpp) (tunewise plan --model ...)", field="backend.model")
    return est


def has_gpu() -> bool:
    """An NVIDIA GPU is visible, checked without importing torch (the advisor stays fast)."""
    import shutil

    return Path("/proc/driver/nvidia/gpus").is_dir() or shutil.which("nvidia-smi") is not None


def fmt_duration(seconds: float) -> str:
    """``42 s``, ``13 min``, ``5.2 h``, ``3.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def size_label(params: float) -> str:
    """``135M``, ``0.49B``, ``7B``: a parameter count the way model cards write it."""
    return f"{params / 1e6:.0f}M" if params < 1e9 else f"{params / 1e9:.3g}B"


def quick_shape(model: str) -> ModelShape | None:
    """The model's shape without converting or downloading anything (the advisor and the
    doctor must stay fast): the bundled model, never converted here, is planned by its size."""
    try:
        return resolve_shape(model, convert=False)
    except TunewiseError:
        from tunewise.backends.local import BUNDLED

        return replace(shape_from_size(135e6), name=model) if model in BUNDLED else None
    except (OSError, ValueError):
        return None


def cpu_training_line(model: str = "smollm2-135m", examples: int = 500,
                      workload: Workload | None = None) -> str | None:
    """One advisor sentence: how long the bundled model (or ``model``) takes to LoRA-tune
    on CPU, at ``workload`` (default: ``examples`` short examples, batch 8)."""
    shape = quick_shape(model)
    if shape is None:
        return None
    w = workload or Workload(seq_len=128, batch_size=8, examples=examples, mean_len=80)
    examples = w.examples
    est = estimate(shape, "lora", w, "cpu")
    big = estimate(KNOWN["llama-2-7b"], "full", w, "gpu")
    return (f"no GPU: fine-tuning a 7B model is out (a full fine-tune needs ~"
            f"{big.total / GB:.0f} GB of GPU memory, LoRA ~"
            f"{estimate(KNOWN['llama-2-7b'], 'lora', w, 'gpu').total / GB:.0f} GB); "
            f"the {size_label(shape.params)} model ({shape.name}) LoRA-trains on CPU in about "
            f"{fmt_duration(est.epoch_seconds['cpu'])} an epoch on {examples} examples "
            f"(~{est.total / GB:.1f} GB RAM; tunewise plan --model SIZE)")


def plan_report(model: str, task: Any = None, params: float | None = None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``tunewise plan`` prints: the shape, the workload, the estimates and the
    assumptions (the CLI renders this; ``--json`` prints it)."""
    shape = shape_from_size(params) if params is not None else resolve_shape(model)
    w = workload_for_task(task, model) if task is not None else Workload()
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(w, key, value)
    return {"model": shape.name, "params": shape.params, "workload": asdict(w),
            "estimates": [e.to_dict() for e in plan(shape, w)],
            "assumptions": assumptions(shape, w)}


def render(report: dict[str, Any], console: Any) -> None:
    """The plan as two tables (GPU, CPU) and the assumptions, user text printed literally."""
    from rich.table import Table
    from rich.text import Text

    labels = {"full": "full fine-tune", "lora": "LoRA", "qlora": "QLoRA", "serve": "serving"}
    for device in ("gpu", "cpu"):
        rows = [e for e in report["estimates"] if e["device"] == device]
        cols = ["method", "precision", "weights", "grads", "optimizer", "activations",
                "total GB"]
        cols += [f"{s} GB" for s in GPU_SIZES_GB] if device == "gpu" else ["time/epoch"]
        table = Table(*cols, title=Text(f"{report['model']} on {device.upper()}"))
        for e in rows:
            cells = [labels[e["method"]], e["precision"]] + [
                f"{e[k]:.2f}" for k in ("weights", "gradients", "optimizer", "activations",
                                        "total")]
            if device == "gpu":
                for size in GPU_SIZES_GB:
                    key = f"{size}GB"
                    mark = "fits" if e["fits"][key] else "no"
                    secs = e["epoch_seconds"].get(key)
                    cells.append(mark + (f", {fmt_duration(secs)}/epoch"
                                         if secs is not None and e["fits"][key] else ""))
            else:
                secs = e["epoch_seconds"].get("cpu")
                cells.append(fmt_duration(secs) if secs is not None else "-")
            table.add_row(*cells)
        console.print(table)
    console.print("assumptions:")
    for line in report["assumptions"]:
        console.print(Text("  - " + line))
