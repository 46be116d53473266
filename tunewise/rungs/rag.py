"""The retrieval rung: put the passages that best match the question into the prompt.

Facts, fresh knowledge and citations belong to retrieval, not to fine-tuning; this rung is
how tunewise measures that. Each answer cites the passage it used; the citation is stripped
from the scored text and checked against the example's gold ``source_id`` when the data has
one, alongside retrieval recall@k and MRR.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.backends.base import Messages
from tunewise.dataset import Document, Example
from tunewise.evaluate import proportion, retrieval_scores
from tunewise.extras import missing
from tunewise.prompts import build_messages, row_system
from tunewise.retrieval.embeddings import shared_embedder
from tunewise.retrieval.index import Hit, RetrievalIndex
from tunewise.rungs.base import Prediction, Prepared, RunContext, RungMeta, answer

SOURCE_FIELD = "source_id"  # example field naming the document that holds the answer
_BRACKET = re.compile(r"\s*\[([^\[\]\n]{1,120})\]")
_LABEL_WORDS = re.compile(r"^(?:passage|source|doc(?:ument)?|id)\s*[:#]?\s*", re.IGNORECASE)


def index_root(ctx: RunContext) -> Path:
    """Where indexes live: beside the store, so every run of a task shares them."""
    return ctx.store.path.parent / "indexes"


def parse_citations(text: str, labels: Sequence[str]) -> tuple[str, list[str]]:
    """Split an answer into the text to score and the passage labels it cites.

    Every ``[...]`` group is removed from the text; the labels inside it (comma-separated,
    optionally written ``passage 2``) that were shown in the prompt are returned in order.
    """
    known = {label.lower(): label for label in labels}
    cited: list[str] = []
    for group in _BRACKET.findall(text):
        for part in re.split(r"[,;]", group):
            key = _LABEL_WORDS.sub("", part.strip()).strip().lower()
            if key in known and known[key] not in cited:
                cited.append(known[key])
    clean = _BRACKET.sub("", text).strip()
    clean = re.sub(r"\s+([.,;:!?])", r"\1", clean)
    return clean, cited


@dataclass
class Retriever:
    """An opened index plus the rung's settings; remembers each question's hits."""

    index: RetrievalIndex
    k: int
    method: str
    hits: dict[str, list[Hit]] = field(default_factory=dict)

    def retrieve(self, questions: Sequence[str]) -> list[list[Hit]]:
        """Top-k chunks per question (one batched search for all new questions)."""
        todo = list(dict.fromkeys(q for q in questions if q not in self.hits))
        if todo:
            for q, found in zip(todo, self.index.search(todo, self.k, self.method),
                                strict=True):
                self.hits[q] = found
        return [self.hits[q] for q in questions]


def passages(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Prompt passages, best last (nearest the question: small models weigh the end of the
    prompt most), labelled 1..k top to bottom: a tiny model copies "3" reliably, a
    30-character document id less so. Each keeps its chunk for citation checks."""
    return [{"id": str(i), "text": h.chunk.text, "chunk": h.chunk}
            for i, h in enumerate(reversed(hits), start=1)]


def answer_span(gold: str) -> str:
    """The gold answer as it would be copied from a passage (no trailing full stop)."""
    return gold.strip().rstrip(".!?,;").strip()


def worked_examples(ctx: RunContext, retriever: Retriever, n: int, pool: int = 50
                    ) -> list[dict[str, str]]:
    """Up to ``n`` shots from the training split: the rag prompt of a training question and
    its gold answer citing the passage that contains it. Only questions whose answer is in
    a retrieved passage qualify, so every shot shows a correct citation."""
    if n <= 0 or ctx.labels:
        return []
    train = ctx.split.train[:pool]
    shots = []
    for ex, hits in zip(train, retriever.retrieve([e.input for e in train]), strict=True):
        span = answer_span(ex.output)
        shown = passages(hits)
        label = next((p["id"] for p in shown if span and span.lower() in p["text"].lower()),
                     None)
        if label is None:
            continue
        prompt = build_messages(ctx.task, ctx.labels, ex.input, passages=shown)
        shots.append({"input": prompt[-1]["content"], "output": f"{span} [{label}]"})
        if len(shots) == n:
            break
    return shots


@dataclass
class RagPrepared(Prepared):
    """A prepared rag rung: the retriever is kept for ``predict`` and freshness re-runs."""

    retriever: Retriever | None = None


class Rag:
    """Retrieve the top-k chunks for the question and answer from them, citing one."""

    name = "rag"
    meta = RungMeta("retrieval", 60, needs={"corpus"}, prompt=("query", "system", "passages"))

    def requires(self, ctx: RunContext) -> str | None:
        if ctx.task.corpus is None or not ctx.corpus:
            return "the task has no corpus"
        return missing("retrieval")

    def prepare(self, ctx: RunContext) -> RagPrepared:
        """Open (or build) the index of the task's corpus."""
        return self.prepare_corpus(ctx, ctx.corpus)

    def prepare_corpus(self, ctx: RunContext, corpus: Sequence[Document]) -> RagPrepared:
        """Open (or build) the index of ``corpus``: the freshness test passes an edited one."""
        spec = ctx.task.retrieval
        index, report = RetrievalIndex.open(
            corpus, index_root(ctx), chunk_tokens=spec.chunk_tokens, overlap=spec.overlap,
            method=spec.method,
            embedder=lambda: shared_embedder(ctx.shared, ctx.store.path.parent / "embeddings"),
        )
        ctx.log(f"{self.name}: index {report.status} ({report.docs} documents, "
                f"{report.chunks} chunks, {report.seconds:.1f} s)")
        retriever = Retriever(index, spec.k, spec.method)
        shots = worked_examples(ctx, retriever, spec.shots)

        def prompt_for(ex: Example) -> Messages:
            hits = retriever.retrieve([ex.input])[0]
            return build_messages(ctx.task, ctx.labels, ex.input, shots=shots,
                                  passages=passages(hits), row_system=row_system(ctx.task, ex))

        info: dict[str, Any] = {"method": spec.method, "k": spec.k,
                                "chunk_tokens": spec.chunk_tokens, "overlap": spec.overlap,
                                "shots": len(shots), **report.to_dict()}
        return RagPrepared(self.name, prompt_for, info, upfront_s=report.seconds,
                           retriever=retriever)

    def with_corpus(self, prepared: Prepared, corpus: Sequence[Document], ctx: RunContext
                    ) -> Prepared:
        """The same rung over another corpus (the freshness test's edited one); the rung
        name and model of ``prepared`` are kept, so ``lora_rag`` can delegate here."""
        fresh = self.prepare_corpus(ctx, corpus)
        fresh.rung, fresh.backend = prepared.rung, prepared.backend
        return fresh

    def predict(self, prepared: Prepared, examples: list[Example], ctx: RunContext
                ) -> list[Prediction]:
        """Answer with passages; strip and check citations; add retrieval metrics to info."""
        assert isinstance(prepared, RagPrepared) and prepared.retriever is not None
        found = prepared.retriever.retrieve([e.input for e in examples])
        prompts = [prepared.prompt_for(e) for e in examples]
        preds = answer(ctx, prepared.backend or ctx.backend, examples, prompts)
        ranked, gold, citations = [], [], []
        for ex, pred, hits in zip(examples, preds, found, strict=True):
            docs = [h.chunk.doc_id for h in hits]
            details: dict[str, Any] = {"passages": [h.chunk.id for h in hits]}
            source = ex.extra.get(SOURCE_FIELD)
            if not ctx.labels:
                labels = {p["id"]: p["chunk"].doc_id for p in passages(hits)}
                clean, cited = parse_citations(pred.text, list(labels))
                details.update(raw=pred.text, cited=[labels[c] for c in cited])
                pred.text = clean
                if source is not None:
                    correct = str(source) in details["cited"]
                    details["citation_correct"] = correct
                    citations.append(float(correct))
            if source is not None:
                ranked.append(docs)
                gold.append(str(source))
                details["gold_in_passages"] = str(source) in docs
            pred.details.update(details)
        summary: dict[str, Any] = {"questions_with_source": len(gold)}
        if gold:
            summary.update(retrieval_scores(ranked, gold, prepared.retriever.k))
        if citations:
            summary["citation_accuracy"] = proportion(citations)
        if not ctx.labels:
            summary["cited_share"] = sum(bool(p.details["cited"]) for p in preds) / max(
                len(preds), 1)
        prepared.info.update(summary)
        return preds
