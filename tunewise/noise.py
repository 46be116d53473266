"""What the libraries under tunewise may print: warnings and progress bars, filtered at the source.

transformers, peft, torch and sentence-transformers each print their own warnings and
progress bars (a ``FutureWarning`` about ``past_key_values``, a bar of GGUF tensor names
while the bundled model is converted, "Loading weights" and "Writing model shards" bars).
A user of tunewise reads tunewise's own progress bars and log lines instead; the libraries'
output is shown only with ``tunewise --verbose``.

Every code path that loads a model calls :func:`quiet_libraries` first, and the one-off
conversion of the bundled model runs inside :func:`silenced`, announced by one line.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator

# Set by the CLI's --verbose / --quiet options (the web UI and the library keep the defaults).
LEVEL = {"verbose": False, "quiet": False}

# Libraries whose warnings are about their own API, not about the user's task.
_NOISY = r"(transformers|peft|torch|accelerate|sentence_transformers|huggingface_hub|tqdm)(\..*)?"


def verbose() -> bool:
    """True when the user asked to see the libraries' own output (``--verbose``)."""
    return LEVEL["verbose"] or os.environ.get("TUNEWISE_VERBOSE") == "1"


def quiet() -> bool:
    """True when only results should be printed (``--quiet``): no bars, no log lines."""
    return LEVEL["quiet"]


def quiet_libraries() -> None:
    """Silence the libraries' warnings and progress bars (unless ``--verbose``).

    Idempotent and cheap: called before every model load. Warnings raised inside the noisy
    libraries are ignored by module, so a warning tunewise itself raises still shows.
    """
    if verbose():
        return
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=_NOISY)
    # transformers and huggingface_hub draw tqdm bars unless told not to.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # the dummy backend never needs transformers
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Run a chatty step with its stderr and warnings swallowed (unless ``--verbose``).

    For steps whose libraries print unconditionally (transformers' GGUF conversion draws a
    raw tqdm bar of tensor names). Exceptions still propagate; what the step printed is
    replayed on stderr when it fails, so nothing needed for a bug report is lost.
    """
    if verbose():
        yield
        return
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(sink.getvalue())
        raise


def note(message: str) -> None:
    """One status line on stderr (skipped with ``--quiet``)."""
    if not quiet():
        print(message, file=sys.stderr, flush=True)
