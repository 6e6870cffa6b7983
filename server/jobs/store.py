"""Job records in SQLite: one connection behind a lock, WAL, and guarded state changes.

A job moves queued -> running -> succeeded | failed | cancelled, or queued -> cancelled; a finished job never
changes again (every update names the state it expects to leave). A cluster worker lost mid-job sends its job
back, running -> queued, for another attempt (`attempt` counts the starts, so a late result from a lost attempt
matches nothing). On open, a job that was running when the previous process died is marked failed with code
`interrupted`, or, when the store is opened with `requeue_running` (the Ray backend), queued again with its start
given back (the head stopped it, not a lost worker: only lost workers use up attempts); queued jobs stay queued
and run.

The queue is fair: the highest priority first, then round-robin across owners (the owner whose last job
started longest ago, or never), then submission order; one artist's overnight batch cannot starve another's
preview.

The schema is versioned (PRAGMA user_version) and brought up to date on open by ordered MIGRATIONS; a database
from a newer server is refused rather than misread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)

# The schema's history, oldest first: MIGRATIONS[i] takes a database from version i (PRAGMA user_version) to
# version i + 1. Append, never edit: a database written by any earlier server is brought up to date in order,
# each step in one transaction with its version number. Version 1 is the schema the store had before it was
# versioned (its databases read user_version 0, and its CREATE ... IF NOT EXISTS leaves them as they are).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the jobs table
        """CREATE TABLE IF NOT EXISTS jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            request TEXT NOT NULL,
            seed INTEGER NOT NULL,
            model TEXT NOT NULL,
            step INTEGER NOT NULL DEFAULT 0,
            total INTEGER NOT NULL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            error_code TEXT,
            error_message TEXT,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq)",
    ),
    (  # 2: who submitted a job (optional; shown on the queue page)
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
    ),
    (  # 3: the fair queue and cluster attempts
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN worker TEXT",
        "CREATE INDEX IF NOT EXISTS jobs_owner_started ON jobs (owner, started_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class NewerDatabase(RuntimeError):
    """The database was written by a newer server (a schema version this code does not know)."""


@dataclass(frozen=True)
class JobRecord:
    id: str
    status: str
    request: dict[str, Any]  # the resolved request, without images
    seed: int
    model: str
    step: int
    total: int
    cancel_requested: bool
    error_code: str | None
    error_message: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    owner: str | None = None
    priority: int = 0
    attempt: int = 0  # how many times the job was started (a lost cluster worker's job starts again)
    worker: str | None = None  # the worker that runs or ran it

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobStore:
    def __init__(self, path: Path, requeue_running: bool = False):
        """`requeue_running`: False marks jobs found running as interrupted (one box: its only worker died with the
        process); True queues them again and gives their start back (a cluster's head restart: its workers ended
        with it, so no late result of that start can arrive, and the restart is not the job's fault)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.migrated_from = self._migrate()
        self.requeued_on_open: list[str] = []
        self.interrupted_on_open = self._mark_interrupted(requeue_running)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION, one migration per transaction; returns the version found.

        The version is read inside each transaction, so two processes opening one database never both apply a step.
        """
        found = None
        try:
            while True:
                with self.transaction() as db:
                    version = db.execute("PRAGMA user_version").fetchone()[0]
                    found = version if found is None else found
                    if version > SCHEMA_VERSION:
                        raise NewerDatabase(
                            f"{self.path} has job store schema version {version}, newer than this server's "
                            f"{SCHEMA_VERSION}: it was written by a newer server; run that one, or use another data dir"
                        )
                    if version == SCHEMA_VERSION:
                        break
                    for statement in MIGRATIONS[version]:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            self._db.close()
            raise
        return found

    def _mark_interrupted(self, requeue: bool) -> list[str]:
        with self.transaction() as db:
            if requeue:
                self.requeued_on_open = [
                    r["id"] for r in db.execute("SELECT id FROM jobs WHERE status = ?", (RUNNING,))
                ]
                db.execute(
                    "UPDATE jobs SET status = ?, step = 0, worker = NULL, attempt = MAX(attempt - 1, 0) "
                    "WHERE status = ?",
                    (QUEUED, RUNNING),
                )
            ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE status = ?", (RUNNING,))]
            db.execute(
                "UPDATE jobs SET status = ?, error_code = 'interrupted', finished_at = ?, "
                "error_message = 'the server stopped while this job was running; submit it again' "
                "WHERE status = ?",
                (FAILED, time.time(), RUNNING),
            )
        return ids

    def create(
        self,
        job_id: str,
        request: dict[str, Any],
        seed: int,
        model: str,
        total: int,
        owner: str | None = None,
        priority: int = 0,
    ) -> JobRecord:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, status, request, seed, model, total, created_at, owner, priority) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, QUEUED, json.dumps(request), seed, model, total, time.time(), owner, priority),
            )
        record = self.get(job_id)
        assert record is not None
        return record

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def list(self, limit: int = 50) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [_record(r) for r in rows]

    def finished_oldest_first(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN (?, ?, ?) ORDER BY finished_at, seq", FINISHED
            ).fetchall()
        return [_record(r) for r in rows]

    def delete(self, job_id: str) -> bool:
        """Remove a finished job's record (retention); running and queued jobs are never deleted."""
        with self.transaction() as db:
            cur = db.execute("DELETE FROM jobs WHERE id = ? AND status IN (?, ?, ?)", (job_id, *FINISHED))
        return cur.rowcount == 1

    def queue_length(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()[0]

    def claim_next(self, worker: str | None = None) -> JobRecord | None:
        """Move the next queued job (module docstring: priority, owners in turn, submission order) to running,
        one attempt more, and return it (None if the queue is empty)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs AS j WHERE status = ? ORDER BY priority DESC, "
                "(SELECT MAX(o.started_at) FROM jobs AS o WHERE o.owner IS j.owner) ASC NULLS FIRST, seq LIMIT 1",
                (QUEUED,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = ?, started_at = ?, attempt = attempt + 1, step = 0, worker = ? "
                "WHERE id = ? AND status = ?",
                (RUNNING, time.time(), worker, row["id"], QUEUED),
            )
        return self.get(row["id"])

    def set_progress(self, job_id: str, step: int, attempt: int | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET step = ? WHERE id = ? AND status = ? AND (? IS NULL OR attempt = ?)",
                (step, job_id, RUNNING, attempt, attempt),
            )

    def finish(
        self,
        job_id: str,
        status: str,
        error_code: str | None = None,
        error_message: str | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Running -> a finished state. False if the job was not running (it never changes twice), or, with
        `attempt`, is running another attempt (a lost worker's late word)."""
        assert status in FINISHED
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET status = ?, error_code = ?, error_message = ?, finished_at = ? "
                "WHERE id = ? AND status = ? AND (? IS NULL OR attempt = ?)",
                (status, error_code, error_message, time.time(), job_id, RUNNING, attempt, attempt),
            )
        return cur.rowcount == 1

    def is_current(self, job_id: str, attempt: int) -> bool:
        """Whether `attempt` is the running attempt of the job (its result may still be accepted)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND status = ? AND attempt = ?", (job_id, RUNNING, attempt)
            ).fetchone()
        return row is not None

    def requeue(self, job_id: str, attempt: int, give_back: bool = False) -> bool:
        """Running attempt `attempt` -> queued again (its worker was lost or stopped); False if it is not that.
        `give_back`: the start does not count (the server stopped it, its worker was not lost)."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET status = ?, step = 0, worker = NULL, attempt = attempt - ? "
                "WHERE id = ? AND status = ? AND attempt = ?",
                (QUEUED, int(give_back), job_id, RUNNING, attempt),
            )
        return cur.rowcount == 1

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job at once, or flag a running one (the worker stops it within a step)."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, cancel_requested = 1 WHERE id = ? AND status = ?",
                (CANCELLED, now, job_id, QUEUED),
            )
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?", (job_id, RUNNING))
        return self.get(job_id)


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        status=row["status"],
        request=json.loads(row["request"]),
        seed=row["seed"],
        model=row["model"],
        step=row["step"],
        total=row["total"],
        cancel_requested=bool(row["cancel_requested"]),
        error_code=row["error_code"],
        error_message=row["error_message"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        owner=row["owner"],
        priority=row["priority"],
        attempt=row["attempt"],
        worker=row["worker"],
    )
