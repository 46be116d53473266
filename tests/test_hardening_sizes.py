"""Input sizes: prompts longer than the local model's context, and few_shot_knn on a large
training set (progress while embedding, embedding cost in the pre-run estimate).

The local backend runs a tiny random Llama (two layers, 64-token context) built in the test
from a word-level tokenizer: it loads in a second and needs no downloaded weights, yet goes
through exactly the code SmolLM2 does.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

WORDS = ["<unk>", "<pad>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "billing",
         "shipping", "returns", "pick", "a", "label", "my", "card", "was", "charged", "twice",
         "where", "is", "parcel", "x"]
CONTEXT = 64


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama and a word-level tokenizer with a chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                  eos_token="<eos>")
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=CONTEXT, pad_token_id=1, eos_token_id=2,
                         bos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny(tiny_model_dir: Path):
    from tunewise.backends.local import LocalBackend

    backend = LocalBackend(str(tiny_model_dir), batch_size=4)
    backend.warnings = []
    backend.warn = backend.warnings.append
    positions: list[int] = []  # the furthest position each forward pass reached
    forward = backend.model.forward

    def recording(*args, **kwargs):
        pos = kwargs.get("position_ids")
        if pos is not None:
            positions.append(int(pos.max()) + 1)
        else:
            cache = kwargs.get("past_key_values")
            past = cache.get_seq_length() if cache is not None else 0
            positions.append(past + kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    backend.model.forward = recording
    backend.positions = positions
    return backend


LABELS = ["billing", "shipping", "returns"]


def _prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "pick a label"}, {"role": "user", "content": text}]


def test_a_prompt_longer_than_the_context_is_cut_with_a_warning(tiny) -> None:
    long = " ".join(["my card was charged twice"] * 400)  # 2,000 tokens, context 64
    scored = tiny.score([_prompt(long), _prompt("where is my parcel")], [LABELS, LABELS])
    assert len(scored) == 2
    assert all(math.isfinite(x) for s in scored for x in s.logprobs)
    # Nothing the model saw was longer than its context (the prompt plus the longest answer).
    assert max(tiny.positions) <= CONTEXT
    assert scored[0].prompt_tokens <= CONTEXT
    assert len(tiny.warnings) == 1
    assert tiny.warnings[0].startswith("1 of 2 prompts exceed")
    assert "context of 64 tokens" in tiny.warnings[0]


def test_prompts_that_fit_score_as_before(tiny) -> None:
    """Cutting touches only oversized prompts: the rest equal the naive computation."""
    prompts = [_prompt("my card was charged twice"), _prompt("where is my parcel")]
    fast = tiny.score(prompts, [LABELS, LABELS])
    naive = tiny.score_naive(prompts, [LABELS, LABELS])
    for f, n in zip(fast, naive, strict=True):
        assert f.logprobs == pytest.approx(n, abs=1e-4)
    assert tiny.warnings == []


def test_the_cut_keeps_head_and_tail() -> None:
    from tunewise.backends.local import fit_context

    ids = list(range(100))
    assert fit_context(ids, 10) == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert fit_context(ids, 100) == ids
    assert fit_context([1, 2, 3], 2) == [1, 3]


def test_generation_prompt_is_cut_to_leave_room_for_the_answer(tiny) -> None:
    long = " ".join(["where is my parcel"] * 500)
    out = tiny.generate([_prompt(long), _prompt("where is my parcel")], max_tokens=4)
    assert len(out) == 2
    assert out[0].prompt_tokens <= CONTEXT - 4
    assert max(tiny.positions) <= CONTEXT
    assert tiny.warnings and tiny.warnings[0].startswith("1 of 2 prompts exceed")


def test_long_items_are_scored_in_smaller_batches(tiny, monkeypatch) -> None:
    """The attention mask is B x T x T: items that would build a huge one go alone."""
    import tunewise.backends.local as local

    ids = [[5] * 40, [5] * 40, [5] * 40, [5] * 3, [5] * 3]
    cids = [[[6, 2]]] * 5
    # Rows are the suffix plus one choice token: 41, 41, 41, 4, 4 (no shared prefix).
    monkeypatch.setattr(local, "MASK_BUDGET", 2 * 41 * 41)
    assert tiny._batches(ids, cids, 0) == [(0, 2), (2, 4), (4, 5)]
    monkeypatch.setattr(local, "MASK_BUDGET", 41 * 41)
    assert tiny._batches(ids, cids, 0) == [(0, 1), (1, 2), (2, 3), (3, 5)]
    monkeypatch.setattr(local, "MASK_BUDGET", 2**26)
    assert tiny._batches(ids, cids, 0) == [(0, 4), (4, 5)]  # batch_size 4 caps it


# ---- few_shot_knn on a large training set ---------------------------------------------------

class _FakeSentenceModel:
    """Stands in for MiniLM: deterministic 8-d unit vectors, counting texts per call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, texts: list[str], **_: object):
        import numpy as np

        self.calls.append(len(texts))
        vecs = np.array([[(hash(t) >> s) % 97 + 1.0 for s in range(8)] for t in texts])
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    def get_sentence_embedding_dimension(self) -> int:
        return 8


def _fake_embedder():
    from tunewise.retrieval.embeddings import Embedder

    embedder = Embedder.__new__(Embedder)  # the real class, without loading MiniLM
    embedder.model, embedder.batch_size, embedder.id = _FakeSentenceModel(), 64, "fake"
    embedder.cache_dir, embedder.encoded, embedder._memo = None, 0, {}
    return embedder


def _big_train(n: int):
    from tunewise.dataset import Example

    return [Example(f"t{i}", f"order {i} was charged twice", ("billing", "shipping")[i % 2])
            for i in range(n)]


@pytest.fixture
def knn_plan(make_task):
    from tunewise.backends.dummy import DummyBackend
    from tunewise.ladder import plan_run
    from tunewise.store import Store
    from tunewise.task import load_task

    task = load_task(make_task(limit=120, split={"test": 20, "dev": 0, "seed": 0}))
    plan = plan_run(task, Store(), DummyBackend(), run_id="t",
                    rungs=["few_shot_random", "few_shot_knn"])
    plan.ctx.split.train = _big_train(200_000)
    return plan


def test_few_shot_knn_reports_progress_while_embedding_200k_rows(knn_plan) -> None:
    from tunewise.rungs.few_shot import FewShotKNN

    lines: list[str] = []
    knn_plan.ctx.log = lines.append
    embedder = _fake_embedder()
    knn_plan.ctx.shared["embedder"] = embedder
    prepared = FewShotKNN().prepare(knn_plan.ctx)
    assert lines == [f"few_shot_knn: embedded {n:,} of 200,000 training inputs"
                     for n in range(20_000, 200_001, 20_000)]
    assert embedder.model.calls == [20_000] * 10 and embedder.encoded == 200_000
    assert prepared.info == {"k": 8, "pool": 200_000}
    # A second preparation finds every vector in the memo: nothing embedded, nothing said.
    lines.clear()
    FewShotKNN().prepare(knn_plan.ctx)
    assert lines == [] and embedder.encoded == 200_000


def test_small_embedding_jobs_stay_quiet() -> None:
    embedder = _fake_embedder()
    said: list[tuple[int, int]] = []
    embedder.encode([f"text {i}" for i in range(2000)], on_progress=lambda *a: said.append(a))
    assert said == [] and embedder.model.calls == [2000]


def test_the_estimate_prices_few_shot_knn_embeddings(knn_plan) -> None:
    from tunewise.cost import resolve_price
    from tunewise.estimate import EMBED_TOKENS_PER_S, check_usd_budget

    lines: list[str] = []
    est = check_usd_budget(knn_plan, lines.append)
    knn, rand = est["rungs"]["few_shot_knn"], est["rungs"]["few_shot_random"]
    per_text = knn_plan.ctx.backend.count_tokens("order 1 was charged twice")
    texts = 200_000 + len(knn_plan.ctx.split.test)
    seconds = texts * per_text / EMBED_TOKENS_PER_S
    hourly = resolve_price(knn_plan.task).entry.compute_per_hour
    assert hourly and knn["embed_texts"] == texts
    assert knn["embed_s"] == pytest.approx(seconds)
    assert knn["embed_usd"] == pytest.approx(seconds / 3600 * hourly)
    # The prompting part is priced alike; the embeddings come on top, and in the total.
    assert knn["usd"] - rand["usd"] == pytest.approx(knn["embed_usd"])
    assert est["usd"] == pytest.approx(knn["usd"] + rand["usd"])
    assert lines[0].endswith(f"; few_shot_knn first embeds {texts:,} texts (about "
                             f"{seconds / 60:.0f} min)")
