"""A prompting rung: the system prompt, plus a recap of the task in the user turn.

Small models often lose an instruction given only in the system message; restating the label
set or the answer format next to the input is a cheap prompt change worth measuring. The
whole rung is this file plus one entry point (``pyproject.toml``).
"""

from __future__ import annotations

from tunewise.dataset import Example
from tunewise.prompts import build_messages, row_system
from tunewise.rungs.base import Prepared, PromptRung, RunContext, RungMeta


class RecapPrompt(PromptRung):
    """system_prompt's messages, with the task restated at the start of the user turn (the
    input stays its last line, where every built-in template puts it)."""

    name = "recap_prompt"
    # between system_prompt (20) and few_shot_random (30): as cheap as a system prompt
    meta = RungMeta("prompting", 25, prompt=("query", "system"))

    def prepare(self, ctx: RunContext) -> Prepared:
        if ctx.labels:
            recap = "Answer with exactly one of: " + ", ".join(ctx.labels) + "."
        else:
            recap = "Answer in the same format as the task asks, nothing else."

        def prompt_for(ex: Example):
            messages = build_messages(ctx.task, ctx.labels, ex.input,
                                      row_system=row_system(ctx.task, ex))
            last = dict(messages[-1])
            last["content"] = f"{recap}\n\n{last['content']}"
            return [*messages[:-1], last]

        return Prepared(self.name, prompt_for, info={"recap": recap})
