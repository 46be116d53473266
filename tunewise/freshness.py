"""The freshness test: change a fact in the corpus, re-ask, and see who follows the edit.

Knowledge that lives in documents changes; a system that reads the documents at answer time
(RAG) follows the change, a model that memorised the old fact (fine-tuning) does not. This
is the evidence for "facts -> retrieval", measured instead of claimed:

1. choose edits: the task's own rules (``freshness.edits``), or automatic swaps of a test
   question's gold answer span in its source document for another value of the same shape
   found elsewhere in the corpus (a time for a time, a name for a name);
2. re-ask the affected questions with the edited corpus (a retrieval rung rebuilds its
   index, since the corpus hash changed; any other rung answers as before);
3. count answers that contain the new value (followed) or still the old one (kept old).

:func:`run_freshness` takes any rung and its prepared state, so the same test runs on a
tuned model once the fine-tuning rungs exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tunewise.dataset import Document, Example
from tunewise.errors import TunewiseError
from tunewise.evaluate import contains_answer, normalize_answer
from tunewise.rungs.base import Prepared, RunContext, Rung
from tunewise.task import FreshnessEdit

SOURCE_FIELD = "source_id"
MAX_ANSWER_WORDS = 6  # longer gold answers are phrases, not swappable facts
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "fifteen", "twenty", "thirty", "forty", "fifty"]
_GROUP = {w.lower(): group for group in (DAYS, MONTHS, NUMBER_WORDS) for w in group}
_PIECE = re.compile(r"\d+|[A-Za-z]+|\s+|[^\w\s]")
# Capitalised words that start clauses rather than name things.
_NOT_NAMES = {"the", "a", "an", "this", "that", "these", "those", "it", "he", "she", "they",
              "we", "you", "i", "if", "when", "what", "who", "where", "why", "how", "and",
              "but", "or", "for", "in", "on", "at", "to", "of", "by", "with", "from", "as",
              "there", "please", "our", "your", "all", "each", "no", "yes", "not", "do"}


@dataclass(frozen=True)
class Question:
    """One re-asked question: the fact it depends on before and after the edit."""

    example: Example
    doc: str
    old: str
    new: str


def _kind(piece: str) -> str:
    """digits | group (day, month, number word) | name (capitalised) | literal."""
    if piece.isdigit():
        return "digits"
    if piece.lower() in _GROUP:
        return "group"
    if piece.isalpha() and piece[0].isupper() and piece.lower() not in _NOT_NAMES:
        return "name"
    return "literal"


def _piece_pattern(piece: str, kind: str) -> str:
    if kind == "digits":
        return rf"\d{{{len(piece)}}}"
    if kind == "group":
        return "(?:" + "|".join(_GROUP[piece.lower()]) + ")"
    if kind == "name":
        if piece.isupper():
            return f"[A-Z]{{{len(piece)}}}"
        return "[A-Z][a-z]+"
    return r"\s" if piece.isspace() else re.escape(piece)


def _shape(value: str) -> re.Pattern[str] | None:
    """A pattern for values shaped like ``value``, or None when it holds no swappable fact.

    Digits, days, months, number words and capitalised words (names, codes) are the parts
    that vary; lower-case words and punctuation stay as they are, so "6:30 p.m." matches
    other afternoon times and "room G14" other rooms. "sky blue" has no such part.
    """
    pieces = _PIECE.findall(value)
    kinds = [_kind(p) for p in pieces]
    if len(value.split()) > MAX_ANSWER_WORDS or all(k == "literal" for k in kinds):
        return None
    body = "".join(_piece_pattern(p, k) for p, k in zip(pieces, kinds, strict=True))
    return re.compile(r"(?<![\w$])" + body + r"(?![\w])")


def _sentence_start(text: str, pos: int) -> bool:
    before = text[:pos].rstrip()
    return not before or before[-1] in ".!?:\n\"'"


def _first_number(value: str) -> float | None:
    m = re.search(r"\d+(?:\.\d+)?", value)
    return float(m.group(0)) if m else None


def _swap_one(old: str, corpus_text: str) -> list[str]:
    """``old`` with one varying part swapped: a nearby day, month or number word, else a
    number with as many digits from the corpus (nearest in value first)."""
    pieces = _PIECE.findall(old)
    kinds = [_kind(p) for p in pieces]
    order = [i for i, k in enumerate(kinds) if k == "group"]
    order += [i for i, k in reversed(list(enumerate(kinds))) if k == "digits"]
    for i in order:
        piece = pieces[i]
        if kinds[i] == "group":
            group = _GROUP[piece.lower()]
            at = [w.lower() for w in group].index(piece.lower())
            near = group[max(0, at - 3) : at + 4]
            options = [w.capitalize() if piece[0].isupper() else w.lower() for w in near]
        else:
            found = set(re.findall(rf"(?<!\d)\d{{{len(piece)}}}(?!\d)", corpus_text))
            if i and pieces[i - 1] == ":":  # minutes stay minutes
                found = {v for v in found if int(v) < 60}
            options = sorted(found, key=lambda v, p=piece: (abs(int(v) - int(p)), v))
        options = [o for o in options if o.lower() != piece.lower()]
        if options:
            return ["".join(pieces[:i]) + o + "".join(pieces[i + 1 :]) for o in options]
    return []


def _candidate_pools(pattern: re.Pattern[str], old: str, question: str, doc_id: str,
                     corpus: Sequence[Document], answers: Sequence[tuple[str, str]]
                     ) -> list[list[str]]:
    """Replacement values for ``old``, most plausible pool first.

    1. other questions' gold answers of the same shape, asked with the same first word
       ("Who ...": another person's name); 2. any gold answer of that shape; 3. spans of
    that shape elsewhere in the corpus (names only mid-sentence, so "The Ward" is not a
    name); 4. ``old`` with one part swapped.
    """
    norm_old = normalize_answer(old)
    first = question.split()[0].lower() if question.split() else ""
    same, other = [], []
    for q, a in answers:
        a = a.strip().rstrip(".!?,;").strip()
        if pattern.fullmatch(a) and normalize_answer(a) != norm_old:
            (same if q.split() and q.split()[0].lower() == first else other).append(a)
    spans = []
    names = _kind(_PIECE.findall(old)[0]) == "name"
    for doc in corpus:
        if doc.id == doc_id:
            continue
        for m in pattern.finditer(doc.text):
            value = m.group(0)
            if normalize_answer(value) == norm_old or (names and (
                    _sentence_start(doc.text, m.start())
                    or any(w.lower() in _NOT_NAMES for w in value.split()))):
                continue
            spans.append(value)
    text = " ".join(d.text for d in corpus if d.id != doc_id)
    return [list(dict.fromkeys(pool)) for pool in (same, other, spans, _swap_one(old, text))]


def _pick(pool: list[str], old: str, rng: np.random.Generator) -> str:
    """A random value among the five nearest in number (numbers), or among all."""
    base = _first_number(old)
    if base is not None:
        pool = sorted(pool, key=lambda v: abs(
            (_first_number(v) if _first_number(v) is not None else 1e9) - base))[:5]
    return pool[int(rng.integers(len(pool)))]


def _span(text: str, value: str) -> str | None:
    """``value`` as it is written in ``text`` (whole words, any case), or None."""
    m = re.search(r"(?<![\w$])" + re.escape(value) + r"(?![\w])", text, re.IGNORECASE)
    return m.group(0) if m else None


def automatic_edits(examples: Sequence[Example], corpus: Sequence[Document],
                    max_questions: int, seed: int = 0,
                    answers: Sequence[Example] | None = None
                    ) -> tuple[list[FreshnessEdit], list[Question]]:
    """Edits swapping gold answer spans for same-shaped values from elsewhere in the corpus.

    A question qualifies when it names its source document (``source_id``) and its gold
    answer (without trailing punctuation) appears verbatim in that document. Two questions
    whose answers overlap in one document are not both edited (the edits would collide).

    Args:
        examples: questions to edit, in order, until ``max_questions`` are found.
        corpus: the documents.
        max_questions: most questions to return.
        seed: seed of the choice among replacement values.
        answers: examples whose gold answers may serve as replacement values (default:
            ``examples``).
    """
    docs = {d.id: d for d in corpus}
    pairs = [(e.input, e.output) for e in (answers if answers is not None else examples)]
    rng = np.random.default_rng(seed)
    edits: list[FreshnessEdit] = []
    questions: list[Question] = []
    finds: dict[str, dict[str, str]] = {}  # doc -> old span -> new value
    for ex in examples:
        if len(questions) >= max_questions:
            break
        doc = docs.get(str(ex.extra.get(SOURCE_FIELD)))
        gold = ex.output.strip().rstrip(".!?,;").strip()
        old = _span(doc.text, gold) if doc and gold else None
        pattern = _shape(old) if old else None
        if pattern is None or doc is None or old is None:
            continue
        planned = finds.setdefault(doc.id, {})
        if old in planned:
            questions.append(Question(ex, doc.id, old, planned[old]))
            continue
        if any(old.lower() in f.lower() or f.lower() in old.lower() for f in planned):
            continue
        taken = (*planned, *planned.values())
        for pool in _candidate_pools(pattern, old, ex.input, doc.id, corpus, pairs):
            pool = [v for v in pool if _span(doc.text, v) is None
                    and _span(ex.input, v) is None
                    and not any(v.lower() in f.lower() or f.lower() in v.lower()
                                for f in taken)]
            if pool:
                new = _pick(pool, old, rng)
                planned[old] = new
                edits.append(FreshnessEdit(doc=doc.id, find=old, replace=new))
                questions.append(Question(ex, doc.id, old, new))
                break
    return edits, questions


def rule_questions(edits: Sequence[FreshnessEdit], examples: Sequence[Example],
                   corpus: Sequence[Document], max_questions: int) -> list[Question]:
    """Questions affected by the user's edit rules: gold answer contains the edited text
    (and, when examples name their source, the source is the edited document).

    Raises:
        TunewiseError: a rule names a document that is not in the corpus, or text the
            document does not contain.
    """
    docs = {d.id: d for d in corpus}
    out: list[Question] = []
    for i, edit in enumerate(edits):
        where = f"freshness.edits.{i}"
        if edit.doc not in docs:
            raise TunewiseError(f"document '{edit.doc}' is not in the corpus", field=where)
        if _span(docs[edit.doc].text, edit.find) is None and edit.find not in docs[edit.doc].text:
            raise TunewiseError(f"document '{edit.doc}' does not contain '{edit.find}'",
                                field=where)
        for ex in examples:
            source = ex.extra.get(SOURCE_FIELD)
            if source is not None and str(source) != edit.doc:
                continue
            if contains_answer(ex.output, edit.find) or edit.find.lower() in ex.output.lower():
                out.append(Question(ex, edit.doc, edit.find, edit.replace))
    return out[:max_questions]


def apply_edits(corpus: Sequence[Document], edits: Sequence[FreshnessEdit]) -> list[Document]:
    """The corpus with every occurrence of each rule's text replaced in its document."""
    by_doc: dict[str, list[FreshnessEdit]] = {}
    for edit in edits:
        by_doc.setdefault(edit.doc, []).append(edit)
    out = []
    for doc in corpus:
        text = doc.text
        for edit in by_doc.get(doc.id, []):
            pattern = re.compile(r"(?<![\w$])" + re.escape(edit.find) + r"(?![\w])")
            text = pattern.sub(lambda _m, new=edit.replace: new, text)
            if edit.find in text:  # a span not on word boundaries ("8:30am" inside a word)
                text = text.replace(edit.find, edit.replace)
        out.append(replace(doc, text=text) if text != doc.text else doc)
    return out


def run_freshness(ctx: RunContext, rung: Rung, prepared: Prepared, *,
                  examples: Sequence[Example] | None = None, max_questions: int | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Edit facts, re-ask the affected questions with ``rung``, count answers that follow.

    Args:
        ctx: the run context (its corpus is the unedited one).
        rung: the rung; if it has ``with_corpus(prepared, corpus, ctx)`` (retrieval rungs),
            it is re-pointed at the edited corpus, else its answers can only come from what
            the model already knows.
        prepared: the rung's prepared state (prompts, index, adapter).
        examples: questions to draw from; default: the test split (rules search all).
        max_questions: most questions to re-ask; default ``freshness.max_questions``.
        log: progress messages; default ``ctx.log``.

    Returns:
        ``{rung, mode, candidates, knew_before, edited_questions, followed, followed_share,
        kept_old, kept_old_share, edits, edited_docs, index, examples: [...]}``: candidates
        are questions whose answer could be edited; with ``freshness.only_known`` (default)
        only those the rung answered right before the edit are edited and counted.
    """
    spec = ctx.task.freshness
    log = log or ctx.log
    limit = max_questions or spec.max_questions
    if not ctx.corpus:
        raise TunewiseError("the freshness test needs a corpus to edit", field="corpus")
    if spec.edits:
        edits = list(spec.edits)
        candidates = rule_questions(edits, examples or ctx.examples, ctx.corpus, 10**9)
    else:
        pool = examples or ctx.split.test
        edits, candidates = automatic_edits(pool, ctx.corpus, len(pool), spec.seed,
                                            answers=ctx.examples)
    summary: dict[str, Any] = {"rung": prepared.rung, "mode": "rules" if spec.edits else
                               "automatic", "only_known": spec.only_known,
                               "candidates": len(candidates)}
    before = rung.predict(prepared, [q.example for q in candidates], ctx) if candidates else []
    knew = [contains_answer(b.text, q.old) for q, b in zip(candidates, before, strict=True)]
    chosen = [i for i, k in enumerate(knew) if k or not spec.only_known][:limit]
    questions = [candidates[i] for i in chosen]
    if not spec.edits:  # apply only the edits the counted questions depend on
        used = {(q.doc, q.old) for q in questions}
        edits = [e for e in edits if (e.doc, e.find) in used]
    summary.update(knew_before=sum(knew), edited_questions=len(questions), edits=len(edits),
                   edited_docs=len({e.doc for e in edits}))
    if not questions:
        summary.update(followed=0, followed_share=0.0, kept_old=0, kept_old_share=0.0,
                       examples=[], note="no question could be edited" + (
                           " among those the rung answered right" if candidates else ""))
        return summary
    edited = apply_edits(ctx.corpus, edits)
    moved = getattr(rung, "with_corpus", None)
    after_prepared = moved(prepared, edited, ctx) if moved else prepared
    log(f"freshness: {len(edits)} edits in {summary['edited_docs']} documents, "
        f"re-asking {len(questions)} questions with {prepared.rung}")
    after = rung.predict(after_prepared, [q.example for q in questions], ctx)
    rows, followed, kept = [], 0, 0
    for i, q, a in zip(chosen, questions, after, strict=True):
        follows = contains_answer(a.text, q.new)
        keeps = not follows and contains_answer(a.text, q.old)
        followed += follows
        kept += keeps
        rows.append({"example_id": q.example.id, "question": q.example.input, "doc": q.doc,
                     "old": q.old, "new": q.new, "before": before[i].text, "after": a.text,
                     "knew_before": knew[i], "followed": follows, "kept_old": keeps})
    summary.update(followed=followed, followed_share=followed / len(rows), kept_old=kept,
                   kept_old_share=kept / len(rows), index=after_prepared.info.get("index"),
                   examples=rows)
    return summary


def ladder_freshness(plan: Any, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ladder's freshness step (``freshness.run: true``): re-prepare the chosen rung
    (its index or adapter comes from the cache) and run :func:`run_freshness` on it.

    Model calls are attributed to ``freshness:<rung>`` in the run's usage. A bad edit rule
    is reported in the result instead of discarding the finished rungs.
    """
    from tunewise.rungs.base import get_rung

    ctx: RunContext = plan.ctx
    name = ctx.task.freshness.rung
    if not any(r["name"] == name and r.get("status") == "done" for r in results):
        return {"rung": name, "status": "skipped", "reason": f"rung '{name}' did not run"}
    base = ctx.backend
    ctx.backend = base.for_rung(f"freshness:{name}")
    try:
        rung = get_rung(name)
        return {"status": "done", **run_freshness(ctx, rung, rung.prepare(ctx))}
    except TunewiseError as exc:
        ctx.log(f"freshness test not run: {exc}")
        return {"rung": name, "status": "error", "reason": str(exc)}
    finally:
        ctx.backend = base
