"""SQLite store: runs, rung results, per-example predictions, and every model call.

Every model call is keyed by a hash of (backend id, call kind, request, params) so an
identical call anywhere, in any run, is served from here for free. Writes happen in
transactions, and the database runs in WAL mode with a busy timeout so a killed process
never leaves half a row and two processes can share one store.

Migrations are append-only and numbered (simonw/llm style): never edit one that shipped,
add the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.files import user_path

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_initial",
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            task_name TEXT NOT NULL,
            task_path TEXT,
            task_fingerprint TEXT NOT NULL,
            config_json TEXT NOT NULL,
            split_json TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            finished_at REAL,
            result_json TEXT
        );
        CREATE TABLE rung_results (
            run_id TEXT NOT NULL REFERENCES runs(id),
            rung TEXT NOT NULL,
            status TEXT NOT NULL,
            metric TEXT,
            score REAL,
            ci_low REAL,
            ci_high REAL,
            details_json TEXT NOT NULL,
            PRIMARY KEY (run_id, rung)
        );
        CREATE TABLE predictions (
            run_id TEXT NOT NULL,
            rung TEXT NOT NULL,
            example_id TEXT NOT NULL,
            input TEXT NOT NULL,
            gold TEXT NOT NULL,
            prediction TEXT NOT NULL,
            score REAL NOT NULL,
            details_json TEXT NOT NULL,
            PRIMARY KEY (run_id, rung, example_id)
        );
        CREATE TABLE calls (
            key TEXT PRIMARY KEY,
            backend_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            request_json TEXT NOT NULL,
            response_json TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            latency_s REAL NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE call_uses (
            run_id TEXT NOT NULL,
            rung TEXT NOT NULL,
            key TEXT NOT NULL,
            cached INTEGER NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX call_uses_run ON call_uses(run_id, rung);
        """,
    ),
    (
        # Why a run failed, and which process ran it (a run whose process is gone without
        # finishing was killed: it is marked failed instead of 'running' for ever).
        "002_run_failure",
        """
        ALTER TABLE runs ADD COLUMN error TEXT;
        ALTER TABLE runs ADD COLUMN pid INTEGER;
        ALTER TABLE runs ADD COLUMN host TEXT
        """,
    ),
    (
        # What a cached re-run needs besides answers (token counts, rendered prompts, a
        # server's last identity), so it loads no model.
        "003_memo",
        """
        CREATE TABLE memo (
            key TEXT PRIMARY KEY,
            value_json TEXT NOT NULL,
            at REAL NOT NULL
        );
        """,
    ),
]


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (signal 0 checks, sends none)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


BUSY_TIMEOUT_S = 30  # how long a write waits for another process's lock before failing


class StoreError(TunewiseError):
    """SQLite could not do what the store asked, for a reason outside tunewise's control
    (disk full, a lock held too long, a read-only file, a damaged file). ``sqlite`` keeps
    the original exception."""

    def __init__(self, message: str, sqlite: sqlite3.Error, path: Path) -> None:
        super().__init__(message, path=path)
        self.sqlite = sqlite


def store_error(exc: sqlite3.Error, path: Path) -> StoreError | None:
    """A one-line error saying what happened to the store, or None for an SQLite error that
    is a bug rather than a condition of the disk or file (a bad query, a constraint).

    Only a file SQLite cannot read as a database is called damaged; a full disk, a lock or a
    read-only file leave a healthy store that must not be moved away.
    """
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name == "SQLITE_FULL" or "disk is full" in text:
        msg = ("the disk holding the store is full; free some space (or point --store / "
               "TUNEWISE_DB at another disk) and run again: finished work is kept")
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        msg = (f"the store stayed locked by another process for over {BUSY_TIMEOUT_S} s "
               "(another tunewise run or a program holding the file open); let it finish "
               "and run again: the store itself is fine")
    elif name.startswith("SQLITE_READONLY") or "readonly" in text:
        msg = ("the store is read-only (this user may not write the file or its folder); "
               "fix the permissions, or point --store / TUNEWISE_DB at a writable path")
    elif name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        msg = ("cannot open the store: its folder is missing, not writable, or the path "
               "is not a file; point --store / TUNEWISE_DB at a writable path")
    elif name.startswith("SQLITE_IOERR") or "disk i/o error" in text:
        msg = (f"disk I/O error while using the store ({exc}); check the disk and run "
               "again: finished work is kept")
    elif name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or type(exc) is sqlite3.DatabaseError:
        msg = (f"not a usable tunewise store ({exc}); move the file away or point "
               "--store / TUNEWISE_DB at another path")
    else:
        return None
    return StoreError(msg, exc, path)


class _Connection(sqlite3.Connection):
    """A connection whose failures from the disk or file are :class:`StoreError` lines."""

    store_path: Path = Path()

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as exc:
            raise store_error(exc, self.store_path) or exc from None

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.Error as exc:
            raise store_error(exc, self.store_path) or exc from None


def default_store_path() -> Path:
    """``$TUNEWISE_DB``, else ``$TUNEWISE_HOME/tunewise.db``, else the per-user data dir."""
    return user_path("TUNEWISE_DB", "tunewise.db", cache=False)


def call_key(backend_id: str, kind: str, request: Any, params: dict[str, Any]) -> str:
    """The cache key of one model call."""
    blob = json.dumps([backend_id, kind, request, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class Store:
    """A tunewise database. Cheap to open; one connection per instance."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                      factory=_Connection)
        except (OSError, sqlite3.Error) as exc:
            raise TunewiseError(f"cannot open the store ({exc})", path=self.path) from None
        self.db.store_path = self.path
        self.db.row_factory = sqlite3.Row
        self.started: list[str] = []  # runs this instance created (marked failed on a crash)
        try:
            self._setup()
        except BaseException:
            self.db.close()
            raise

    def _setup(self, patience_s: float = 60.0) -> None:
        """WAL mode, busy timeout, migrations. Switching a new file to WAL can fail at once
        with "database is locked" while another process creates the same store (SQLite
        does not wait on that lock), so a locked store is retried, never called corrupt."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
                return
            except StoreError as exc:
                if "locked" not in str(exc.sqlite) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

        A failed COMMIT (disk full) is rolled back too, so the connection stays usable and
        the error is the one line of :func:`store_error`; earlier transactions are kept.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # SQLite may already have rolled back (SQLITE_FULL)
                with suppress(sqlite3.Error):  # keep the first error, the informative one
                    sqlite3.Connection.execute(self.db, "ROLLBACK")
            raise

    def _migrate(self) -> None:
        with self.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            done = {r[0] for r in db.execute("SELECT name FROM _migrations")}
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))

    # ---- calls and cache -------------------------------------------------------------
    def get_calls(self, keys: list[str]) -> dict[str, sqlite3.Row]:
        """Cached calls among ``keys``."""
        found: dict[str, sqlite3.Row] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"SELECT * FROM calls WHERE key IN ({marks})", chunk):
                found[row["key"]] = row
        return found

    def put_calls(self, rows: list[dict[str, Any]]) -> None:
        """Record finished calls; a call already present is left as it was."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO calls VALUES (:key, :backend_id, :kind, :request_json, "
                ":response_json, :prompt_tokens, :completion_tokens, :latency_s, :created_at)",
                rows,
            )

    def get_memo(self, keys: list[str]) -> dict[str, Any]:
        """Remembered values among ``keys``: what a re-run needs besides model answers
        (token counts, rendered prompts, a server's identity), so it loads no model."""
        found: dict[str, Any] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                    f"SELECT key, value_json FROM memo WHERE key IN ({marks})", chunk):
                found[row["key"]] = json.loads(row["value_json"])
        return found

    def put_memo(self, values: dict[str, Any]) -> None:
        """Remember values by key (a newer value replaces an older one)."""
        now = time.time()
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO memo VALUES (?, ?, ?)",
                           [(k, json.dumps(v, ensure_ascii=False), now)
                            for k, v in values.items()])

    def log_uses(self, run_id: str, rung: str, uses: list[tuple[str, bool]]) -> None:
        """Note which calls a rung used and whether each came from the cache."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO call_uses VALUES (?, ?, ?, ?, ?)",
                [(run_id, rung, key, int(cached), now) for key, cached in uses],
            )

    def usage(self, run_id: str) -> dict[str, dict[str, int]]:
        """Calls made and cache hits per rung of a run."""
        out: dict[str, dict[str, int]] = {}
        for row in self.db.execute(
            "SELECT rung, SUM(cached) hits, SUM(1 - cached) made FROM call_uses "
            "WHERE run_id = ? GROUP BY rung",
            (run_id,),
        ):
            out[row["rung"]] = {"cache_hits": row["hits"], "calls_made": row["made"]}
        return out

    def run_usage(self, run_id: str) -> dict[str, Any]:
        """A run's calls and tokens in total and per rung (``usage`` of result.json)."""
        rungs = self.usage(run_id)
        row = self.db.execute(
            "SELECT COALESCE(SUM(c.prompt_tokens + c.completion_tokens), 0) t FROM call_uses u "
            "JOIN calls c ON c.key = u.key WHERE u.run_id = ?", (run_id,)).fetchone()
        made = sum(int(u["calls_made"] or 0) for u in rungs.values())
        hits = sum(int(u["cache_hits"] or 0) for u in rungs.values())
        return {"calls": made + hits, "calls_made": made, "cache_hits": hits,
                "tokens": int(row["t"]), "rungs": rungs}

    def cache_stats(self) -> dict[str, Any]:
        """Number of cached calls and their tokens, for `tunewise cache`."""
        row = self.db.execute(
            "SELECT COUNT(*) n, COALESCE(SUM(prompt_tokens), 0) p, "
            "COALESCE(SUM(completion_tokens), 0) c FROM calls"
        ).fetchone()
        return {"calls": row["n"], "prompt_tokens": row["p"], "completion_tokens": row["c"]}

    def clear_cache(self) -> int:
        """Forget every cached call; returns how many were removed."""
        with self.transaction() as db:
            return db.execute("DELETE FROM calls").rowcount

    # ---- runs --------------------------------------------------------------------------
    def create_run(self, task_name: str, task_path: str | None, fingerprint: str,
                   config: dict[str, Any], split: dict[str, Any]) -> str:
        """Start a run and return its id."""
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.mark_interrupted()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (id, task_name, task_path, task_fingerprint, config_json, "
                "split_json, status, created_at, pid, host) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                (run_id, task_name, task_path, fingerprint, json.dumps(config),
                 json.dumps(split), time.time(), os.getpid(), socket.gethostname()),
            )
        self.started.append(run_id)
        return run_id

    def fail_run(self, run_id: str, reason: str) -> None:
        """Mark a run that stopped before finishing as ``failed``, with the reason."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = 'failed', error = ?, finished_at = ? "
                       "WHERE id = ? AND status = 'running'", (reason, time.time(), run_id))

    def mark_interrupted(self) -> int:
        """Mark runs left ``running`` by a process of this machine that no longer exists
        (killed, power loss) as failed; returns how many. Runs of live processes and of
        other machines sharing the store are left alone."""
        rows = self.db.execute("SELECT id, pid FROM runs WHERE status = 'running' AND "
                               "host = ? AND pid IS NOT NULL", (socket.gethostname(),))
        gone = [(r["id"], r["pid"]) for r in rows if not _process_alive(r["pid"])]
        for run_id, pid in gone:
            self.fail_run(run_id, f"interrupted: its process ({pid}) ended without finishing")
        return len(gone)

    def finish_run(self, run_id: str, result: dict[str, Any], status: str = "done") -> None:
        """Mark a run finished and keep its result."""
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, result_json = ? WHERE id = ?",
                (status, time.time(), json.dumps(result, allow_nan=False), run_id),
            )

    def save_rung(self, run_id: str, rung: str, status: str, score: dict[str, Any] | None,
                  details: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
        """Store a rung's outcome and its per-example rows in one transaction."""
        with self.transaction() as db:
            db.execute("DELETE FROM predictions WHERE run_id = ? AND rung = ?", (run_id, rung))
            db.execute(
                "INSERT OR REPLACE INTO rung_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, rung, status,
                 score and score["metric"], score and score["value"],
                 score and score["ci_low"], score and score["ci_high"],
                 json.dumps(details)),
            )
            db.executemany(
                "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, rung, p["example_id"], p["input"], p["gold"], p["prediction"],
                  p["score"], json.dumps(p.get("details", {}))) for p in predictions],
            )

    def runs(self, limit: int = 50) -> list[sqlite3.Row]:
        """Most recent runs first (killed runs marked failed first, when the store is
        writable)."""
        with contextlib.suppress(sqlite3.Error):  # a read-only store still lists
            self.mark_interrupted()
        return list(self.db.execute(
            "SELECT id, task_name, task_path, status, created_at, finished_at, error FROM runs "
            "ORDER BY created_at DESC LIMIT ?", (limit,)))

    def run(self, run_id: str) -> sqlite3.Row:
        """One run; ``latest`` means the most recent."""
        if run_id == "latest":
            row = self.db.execute("SELECT * FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()
        else:
            row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise TunewiseError(f"no run '{run_id}' in the store", path=self.path)
        return row

    def latest_run_for(self, fingerprint: str) -> sqlite3.Row | None:
        """The newest finished run of a task with this fingerprint."""
        return self.db.execute(
            "SELECT * FROM runs WHERE task_fingerprint = ? AND status = 'done' "
            "ORDER BY created_at DESC LIMIT 1", (fingerprint,)).fetchone()

    def predictions(self, run_id: str, rung: str | None = None) -> list[sqlite3.Row]:
        """Per-example rows of a run (optionally one rung)."""
        sql, args = "SELECT * FROM predictions WHERE run_id = ?", [run_id]
        if rung:
            sql, args = sql + " AND rung = ?", [*args, rung]
        return list(self.db.execute(sql + " ORDER BY rung, example_id", args))


def cached_map(store: Store, backend_id: str, kind: str, requests: list[Any],
               params: dict[str, Any], compute: Callable[[list[int]], list[dict[str, Any]]],
               *, run_id: str | None = None, rung: str = "") -> list[dict[str, Any]]:
    """Answer each request from the cache, computing only the misses.

    ``compute(indices)`` returns, for the requests at those indices, dicts with ``response``
    (JSON-able), ``prompt_tokens``, ``completion_tokens`` and ``latency_s``. Results are
    written in one transaction per batch, so work survives an interruption between batches.
    Returned dicts carry those keys plus ``cached``.
    """
    keys = [call_key(backend_id, kind, r, params) for r in requests]
    hits = store.get_calls(keys)
    missing = [i for i, k in enumerate(keys) if k not in hits]
    fresh: dict[int, dict[str, Any]] = {}
    if missing:
        results = compute(missing)
        now = time.time()
        rows = []
        for i, res in zip(missing, results, strict=True):
            fresh[i] = res
            rows.append({
                "key": keys[i], "backend_id": backend_id, "kind": kind,
                "request_json": json.dumps({"request": requests[i], "params": params},
                                           ensure_ascii=False),
                "response_json": json.dumps(res["response"], ensure_ascii=False),
                "prompt_tokens": res["prompt_tokens"],
                "completion_tokens": res["completion_tokens"],
                "latency_s": res["latency_s"], "created_at": now,
            })
        store.put_calls(rows)
    out: list[dict[str, Any]] = []
    for i, key in enumerate(keys):
        if i in fresh:
            out.append({**fresh[i], "cached": False})
        else:
            row = hits[key]
            out.append({
                "response": json.loads(row["response_json"]),
                "prompt_tokens": row["prompt_tokens"],
                "completion_tokens": row["completion_tokens"],
                "latency_s": row["latency_s"], "cached": True,
            })
    if run_id:
        store.log_uses(run_id, rung, [(k, o["cached"]) for k, o in zip(keys, out, strict=True)])
    return out
