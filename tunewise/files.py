"""Small file helpers shared by the task, data, store and training modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir, user_data_dir

from tunewise.errors import TunewiseError


def read_utf8(path: Path, *, missing: str, folder: str, encoding: str = "utf-8") -> str:
    """The text of ``path``; a one-line error (with the line of the first bad byte) when it
    is missing, a folder, unreadable (permissions, I/O error, symlink loop) or not UTF-8.

    Args:
        missing: the message when the file does not exist.
        folder: the message when the path is a folder.
        encoding: ``utf-8-sig`` to drop a byte-order mark.
    """
    if "\0" in str(path):
        raise TunewiseError("the path contains a NUL byte", path=repr(str(path))[1:-1])
    try:
        if path.is_dir():
            raise TunewiseError(folder, path=path)
        if not path.is_file() and not path.is_symlink():  # a symlink loop: say ELOOP
            raise TunewiseError(missing, path=path)
        data = path.read_bytes()
    except FileNotFoundError:  # a dangling symlink
        raise TunewiseError(missing, path=path) from None
    except PermissionError:
        raise TunewiseError("permission denied: this user may not read the file",
                            path=path) from None
    except OSError as exc:  # EIO, a symlink loop, a vanished network mount
        reason = exc.strerror or type(exc).__name__
        raise TunewiseError(f"cannot read the file: {reason} (errno {exc.errno})",
                            path=path) from None
    try:
        # Universal newlines, as Path.read_text gives: "\r\n" and "\r" end a line too.
        return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TunewiseError(f"not UTF-8 text (byte {exc.start})", path=path, line=line
                            ) from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` so that readers see the old file or the new one, never half of one.

    The text goes to a temporary file in the same folder, is flushed to disk, then renamed
    over ``path``: a kill or a full disk leaves no truncated result.json or report.

    Raises:
        TunewiseError: the file cannot be written (the message says why; the temporary
            file is removed).
    """
    import tempfile

    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise TunewiseError(f"cannot write this file ({exc.strerror or exc})", path=path
                            ) from None


def user_path(override: str, name: str, *, cache: bool) -> Path:
    """``$<override>``, else ``$TUNEWISE_HOME/<name>``, else ``<name>`` in the per-user data
    dir (``cache=False``) or cache dir (``cache=True``)."""
    if os.environ.get(override):
        return Path(os.environ[override])
    home = os.environ.get("TUNEWISE_HOME")
    where = user_cache_dir if cache else user_data_dir
    return (Path(home) if home else Path(where("tunewise", appauthor=False))) / name


def progress_bar(*, console: Any = None, loss: bool = False, transient: bool = False,
                 disable: bool = False) -> Any:
    """The Rich progress bar every long step uses: name, bar, n/total, elapsed, ETA (and
    the running loss for training). On stderr unless another console is given."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from tunewise.noise import quiet

    extra = [TextColumn("loss {task.fields[loss]}")] if loss else []
    disable = disable or quiet()  # --quiet: results only
    return Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                    *extra, TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console or Console(stderr=True), transient=transient,
                    disable=disable)
