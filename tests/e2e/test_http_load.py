"""Load: 20 clients submitting and polling at once on loopback."""

from __future__ import annotations

import re
import statistics
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import job_body, keyframe

pytestmark = pytest.mark.slow
CLIENTS = 20


def test_20_clients_at_once_every_job_completes_exactly_once_in_order(configured_server):
    url = configured_server.url
    results: dict[int, dict] = {}
    start = threading.Barrier(CLIENTS + 1)
    health_latencies: list[float] = []
    done = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            start.wait()
            body = job_body(num_frames=4, steps=2, seed=n, keyframes=[keyframe(0), keyframe(3, shift=n)])
            job_id = c.post("/v1/jobs", json=body).json()["id"]
            while (job := c.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.05)
            results[n] = job

    def health_pinger() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            start.wait()
            while not done.is_set():
                t = time.perf_counter()
                assert c.get("/v1/health").status_code == 200
                health_latencies.append(time.perf_counter() - t)
                time.sleep(0.05)

    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            client(n)
        except BaseException as e:  # noqa: BLE001 - reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(CLIENTS)]
    pinger = threading.Thread(target=health_pinger)
    for t in threads:
        t.start()
    pinger.start()
    for t in threads:
        t.join(300)
    done.set()
    pinger.join(30)

    assert not errors, errors
    jobs = list(results.values())
    assert len(jobs) == CLIENTS and all(j["status"] == "succeeded" for j in jobs)
    assert len({j["id"] for j in jobs}) == CLIENTS
    by_submission = sorted(jobs, key=lambda j: j["created_at"])
    by_start = sorted(jobs, key=lambda j: j["started_at"])
    assert [j["id"] for j in by_submission] == [j["id"] for j in by_start]  # in order
    for earlier, later in zip(by_start, by_start[1:], strict=False):
        assert earlier["finished_at"] <= later["started_at"]  # one at a time
    log = configured_server.log()
    for job in jobs:  # each ran exactly once
        assert len(re.findall(f"job {job['id']} succeeded", log)) == 1
    median, worst = statistics.median(health_latencies), max(health_latencies)
    print(
        f"{CLIENTS} clients, {len(jobs)} jobs; /v1/health during the load: {len(health_latencies)} calls, "
        f"median {median * 1000:.1f} ms, max {worst * 1000:.1f} ms"
    )
    assert median < 0.1
