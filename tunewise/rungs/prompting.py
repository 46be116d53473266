"""The two cheapest rungs: the bare input, and a system prompt that states the task."""

from __future__ import annotations

from tunewise.dataset import Example
from tunewise.prompts import build_messages, row_system
from tunewise.rungs.base import Prepared, PromptRung, RunContext, RungMeta


class ZeroShot(PromptRung):
    """The input alone, as a user would paste it: the baseline every rung is compared to."""

    name = "zero_shot"
    meta = RungMeta("prompting", 10, prompt=("query",))

    def prepare(self, ctx: RunContext) -> Prepared:
        def prompt_for(ex: Example):
            return build_messages(ctx.task, ctx.labels, ex.input, system=False,
                                  row_system=row_system(ctx.task, ex))

        return Prepared(self.name, prompt_for)


class SystemPrompt(PromptRung):
    """Instructions: what the task is, the label set or output format, the user's rules."""

    name = "system_prompt"
    meta = RungMeta("prompting", 20)

    def prepare(self, ctx: RunContext) -> Prepared:
        def prompt_for(ex: Example):
            return build_messages(ctx.task, ctx.labels, ex.input,
                                  row_system=row_system(ctx.task, ex))

        return Prepared(self.name, prompt_for)
