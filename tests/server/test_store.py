"""The SQLite job store: order, guarded state changes, restart behaviour, concurrent claims."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from server.jobs.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SCHEMA_VERSION,
    SUCCEEDED,
    JobStore,
    NewerDatabase,
)


def add(store, n, prefix="a"):
    ids = [f"{prefix}{i:031x}" for i in range(n)]
    for job_id in ids:
        store.create(job_id, {"num_frames": 16}, seed=1, model="m", total=10)
    return ids


def test_jobs_are_claimed_in_submission_order(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = add(store, 3)
    assert [store.claim_next().id for _ in range(3)] == ids
    assert store.claim_next() is None


def test_a_finished_job_never_changes_again(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    (job_id,) = add(store, 1)
    store.claim_next()
    store.set_progress(job_id, 4)
    assert store.finish(job_id, SUCCEEDED)
    assert not store.finish(job_id, FAILED, "x", "y")
    store.set_progress(job_id, 9)
    store.cancel(job_id)
    job = store.get(job_id)
    assert (job.status, job.step, job.error_code) == (SUCCEEDED, 4, None)


def test_cancel_is_immediate_when_queued_and_flagged_when_running(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    first, second = add(store, 2)
    store.claim_next()
    assert store.cancel(second).status == CANCELLED
    running = store.cancel(first)
    assert running.status == RUNNING and running.cancel_requested
    assert store.claim_next() is None  # the cancelled one is never claimed


def test_restart_marks_running_jobs_interrupted_and_keeps_the_rest(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    done, running, waiting = add(store, 3)
    store.claim_next()
    store.finish(done, SUCCEEDED)
    store.claim_next()
    store.close()  # the process "dies" with `running` running

    reopened = JobStore(path)
    assert reopened.interrupted_on_open == [running]
    assert reopened.get(running).status == FAILED and reopened.get(running).error_code == "interrupted"
    assert reopened.get(done).status == SUCCEEDED
    assert reopened.get(waiting).status == QUEUED and reopened.queue_length() == 1


def test_eight_threads_claiming_fifty_jobs_claim_each_exactly_once(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = add(store, 50)
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all():
        while (job := store.claim_next()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids) and len(claimed) == 50


# The schema as the store wrote it before it was versioned (its databases read user_version 0), and its INSERT:
# a copy, not imported, so this keeps checking the upgrade of such a database whatever MIGRATIONS becomes.
UNVERSIONED_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
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
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq);
"""
OLD_ROWS = [
    # id, status, request, seed, model, step, total, cancel_requested, error_code, error_message, created/started/
    # finished at
    ("a" * 32, SUCCEEDED, '{"prompt": "done", "num_frames": 16}', 7, "sd15", 25, 25, 0, None, None, 10.0, 11.0, 20.0),
    ("b" * 32, FAILED, '{"prompt": "oom"}', 8, "sd15", 3, 25, 0, "out_of_memory", "CUDA OOM", 12.0, 20.5, 21.0),
    ("c" * 32, CANCELLED, '{"prompt": "stop"}', 9, "sd15", 0, 25, 1, None, None, 13.0, None, 13.5),
    ("d" * 32, RUNNING, '{"prompt": "cut"}', 10, "sd15", 5, 25, 0, None, None, 14.0, 21.0, None),
    ("e" * 32, QUEUED, '{"prompt": "next"}', 11, "sd15", 0, 30, 0, None, None, 15.0, None, None),
]


def _unversioned_database(path):
    db = sqlite3.connect(path)
    db.executescript(UNVERSIONED_SCHEMA)
    db.executemany(
        "INSERT INTO jobs (id, status, request, seed, model, step, total, cancel_requested, error_code, "
        "error_message, created_at, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        OLD_ROWS,
    )
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()


def test_a_database_from_before_versioning_is_upgraded_and_nothing_is_lost(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    _unversioned_database(path)

    store = JobStore(path)
    assert store.migrated_from == 0 and SCHEMA_VERSION == 3
    for row in OLD_ROWS:
        job = store.get(row[0])
        expected = row
        if row[1] == RUNNING:  # running when that server stopped: interrupted, as on any restart
            assert (job.status, job.error_code, job.finished_at is not None) == (FAILED, "interrupted", True)
            interrupted = (job.error_code, job.error_message, *row[10:12], job.finished_at)
            expected = row[:1] + (FAILED,) + row[2:8] + interrupted
        got = (
            job.id, job.status, store._db.execute("SELECT request FROM jobs WHERE id = ?", (job.id,)).fetchone()[0],
            job.seed, job.model, job.step, job.total, int(job.cancel_requested), job.error_code, job.error_message,
            job.created_at, job.started_at, job.finished_at,
        )  # fmt: skip
        assert got == expected and job.owner is None
    assert [j.id for j in store.list()] == [r[0] for r in reversed(OLD_ROWS)]  # order kept (seq)
    # New jobs carry an owner; the fair queue takes alice's first job before the old queued one, whose owner
    # (none) has had jobs started before.
    store.create("f" * 32, {"prompt": "new"}, seed=1, model="sd15", total=4, owner="alice")
    assert store.get("f" * 32).owner == "alice"
    assert [store.claim_next().id, store.claim_next().id] == ["f" * 32, "e" * 32]
    store.close()

    reopened = JobStore(path)  # already current: nothing to do, nothing changes
    assert reopened.migrated_from == SCHEMA_VERSION
    assert reopened.get("f" * 32).owner == "alice" and reopened.get("a" * 32).status == SUCCEEDED
    assert reopened._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    reopened.close()


def test_an_upgraded_database_has_the_schema_of_a_new_one(tmp_path):
    _unversioned_database(tmp_path / "old.sqlite3")
    upgraded, fresh = JobStore(tmp_path / "old.sqlite3"), JobStore(tmp_path / "new.sqlite3")
    assert fresh.migrated_from == 0
    columns = [list(map(tuple, s._db.execute("PRAGMA table_info(jobs)"))) for s in (upgraded, fresh)]
    indexes = [list(map(tuple, s._db.execute("PRAGMA index_list(jobs)"))) for s in (upgraded, fresh)]
    assert columns[0] == columns[1] and indexes[0] == indexes[1]
    assert "owner" in [c[1] for c in columns[0]]


def test_a_database_from_a_newer_server_is_refused_untouched(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    JobStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(NewerDatabase, match="written by a newer server"):
        JobStore(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()


def test_owner_is_kept_and_optional(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.create("a" * 32, {}, seed=1, model="m", total=1, owner="Zoë (lighting)")
    store.create("b" * 32, {}, seed=1, model="m", total=1)
    assert [(j.id[0], j.owner) for j in store.list()] == [("b", None), ("a", "Zoë (lighting)")]


def test_the_queue_takes_priority_then_owners_in_turn_then_submission_order(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    for i in range(5):
        store.create(f"a{i:031x}", {}, seed=1, model="m", total=1, owner="alice")
    store.create("b" * 32, {}, seed=1, model="m", total=1, owner="bob")
    order = []
    while (job := store.claim_next()) is not None:  # one worker: each job finishes before the next is taken
        order.append(job.id[0] + job.id[-1])
        store.finish(job.id, SUCCEEDED)
    assert order == ["a0", "bb", "a1", "a2", "a3", "a4"]  # bob's one job runs second, not sixth

    store.create("c" * 32, {}, seed=1, model="m", total=1, owner="carol")
    store.create("d" * 32, {}, seed=1, model="m", total=1, owner="bob", priority=5)
    store.create("e" * 32, {}, seed=1, model="m", total=1, owner=None, priority=-1)
    store.create("f" * 32, {}, seed=1, model="m", total=1, owner="alice")
    claimed = [store.claim_next().id[0] for _ in range(4)]
    assert claimed == ["d", "c", "f", "e"]  # priority first; carol never ran, alice ran last; -1 waits for all
    assert store.get("d" * 32).priority == 5 and store.get("e" * 32).priority == -1


def test_a_lost_attempt_is_requeued_and_its_late_word_is_ignored(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    (job_id,) = add(store, 1)
    first = store.claim_next(worker="node-a/0")
    assert (first.attempt, first.worker) == (1, "node-a/0")
    store.set_progress(job_id, 3, attempt=1)
    assert store.requeue(job_id, attempt=1)
    assert not store.requeue(job_id, attempt=1)  # queued now: nothing to requeue
    queued = store.get(job_id)
    assert (queued.status, queued.step, queued.worker, queued.attempt) == (QUEUED, 0, None, 1)

    second = store.claim_next(worker="node-b/0")
    assert (second.attempt, second.worker) == (2, "node-b/0")
    store.set_progress(job_id, 5, attempt=1)  # the lost worker's progress: ignored
    assert not store.is_current(job_id, 1) and store.is_current(job_id, 2)
    assert not store.finish(job_id, SUCCEEDED, attempt=1)  # the lost worker's result: ignored
    assert store.get(job_id).status == RUNNING and store.get(job_id).step == 0
    assert store.finish(job_id, SUCCEEDED, attempt=2)


def test_a_cluster_head_restart_requeues_running_jobs_and_gives_their_start_back(tmp_path):
    """Only a lost worker uses up an attempt: a job on its last attempt when the head died runs again."""
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    fresh, spent, waiting = add(store, 3)
    assert store.claim_next().id == fresh  # attempt 1 of 3
    store._db.execute("UPDATE jobs SET attempt = 2 WHERE id = ?", (spent,))  # started twice before
    assert store.claim_next().attempt == 3  # spent: its last attempt
    store.close()  # the head dies with both running

    reopened = JobStore(path, requeue_running=True)
    assert sorted(reopened.requeued_on_open) == sorted([fresh, spent]) and reopened.interrupted_on_open == []
    assert (reopened.get(fresh).status, reopened.get(fresh).attempt) == (QUEUED, 0)
    assert (reopened.get(spent).status, reopened.get(spent).attempt) == (QUEUED, 2)
    assert reopened.get(waiting).status == QUEUED
    assert reopened.claim_next().id == fresh and reopened.get(fresh).attempt == 1
    reopened.close()
    assert JobStore(path).interrupted_on_open == [fresh]  # one box: a running job found on open is interrupted


def test_a_stop_gives_the_start_back_and_a_lost_worker_does_not(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    (job_id,) = add(store, 1)
    assert store.claim_next().attempt == 1
    assert store.requeue(job_id, attempt=1, give_back=True)  # the server stopped it
    assert store.claim_next().attempt == 1
    assert store.requeue(job_id, attempt=1)  # its worker was lost: the start counts
    assert store.claim_next().attempt == 2
