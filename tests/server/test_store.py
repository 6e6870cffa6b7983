"""The SQLite job store: order, guarded state changes, restart behaviour, concurrent claims."""

from __future__ import annotations

import threading

from server.jobs.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore


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
