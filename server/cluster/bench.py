"""Cluster benchmark: python -m server.cluster.bench [--jobs 8] [--steps 10] [--out BENCHMARKS.md]

On a simulated Ray cluster on this machine (ray.cluster_utils.Cluster: a head and nodes declaring one GPU each,
real raylet processes) and the tiny model, each through a real `python -m server` process and its HTTP API:
jobs/minute with the local backend, with 1 and with 2 Ray workers (the same jobs); the dispatch overhead per job,
measured directly: the job's claim to its finish (started_at to finished_at in the store) minus the worker's own
time in run_job (the server logs it per job); the time from a node's loss (SIGKILL of its processes) to its job
queued again; the idle memory (RSS) of the head's server process, of a node's Ray processes and of a worker.
Appends a table to BENCHMARKS.md. CPU-only here: every "GPU" is a CPU share, so jobs/minute measures the
dispatch, not a GPU.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sketch() -> str:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64))
    ImageDraw.Draw(img).rectangle((8, 12, 40, 54), outline="white", width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class _Server:
    def __init__(self, config: Path, data: Path, log: Path):
        self.log_path = log
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--config",
                str(config),
                "--port",
                str(self.port),
                "--data-dir",
                str(data),
            ],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                self.get("/v1/health")
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: see {log}") from None
                time.sleep(0.2)
        raise TimeoutError("server not ready")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def workers(self, count: int) -> None:
        deadline = time.monotonic() + 120
        while len([w for w in self.get("/v1/health")["workers"] if w["state"] == "idle"]) != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not {count} idle workers")
            time.sleep(0.2)

    def run_jobs(self, n: int, steps: int) -> tuple[float, list[dict]]:
        image = _sketch()
        body = {"prompt": "a ball", "modality": "lineart", "num_frames": 16, "width": 64, "height": 64}
        started = time.monotonic()
        ids = [
            self.post("/v1/jobs", {**body, "steps": steps, "seed": i, "keyframes": [{"index": 0, "image": image}]})[
                "id"
            ]
            for i in range(n)
        ]
        jobs = [self.wait(job_id) for job_id in ids]
        return time.monotonic() - started, jobs

    def wait(self, job_id: str) -> dict:
        while (job := self.get(f"/v1/jobs/{job_id}"))["status"] in ("queued", "running"):
            time.sleep(0.05)
        return job

    def worker_seconds(self) -> dict[str, float]:
        """Each succeeded job's time in the worker's run_job, from the server's log."""
        text = self.log_path.read_text(errors="replace")
        return {m[1]: float(m[2]) for m in re.finditer(r"job (\w+) succeeded on \S+ in ([\d.]+) s", text)}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        self.log.close()


def _rss_mib(pids) -> float:
    import psutil

    return sum(psutil.Process(p).memory_info().rss for p in pids) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.cluster.bench", description=__doc__)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    os.environ.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    import psutil
    import ray
    from ray.cluster_utils import Cluster

    from .dispatcher import FAST_HEALTH_CHECKS

    folder = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    rows: list[tuple[str, str]] = []

    local_config = folder / "local.toml"
    local_config.write_text('[model]\nbase = "tiny"\n')
    server = _Server(local_config, folder / "data", folder / "local.log")
    seconds, jobs = server.run_jobs(args.jobs, args.steps)
    local_per_job = seconds / args.jobs
    rows.append(
        ("local backend, 1 worker thread", f"{60 * args.jobs / seconds:.1f} jobs/min ({local_per_job:.2f} s a job)")
    )
    server.stop()

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS},
    )
    try:
        before = {q.pid for q in psutil.process_iter()}
        first = cluster.add_node(num_cpus=1, num_gpus=1)
        node_pids = {q.pid for q in psutil.process_iter()} - before
        ray_config = folder / "ray.toml"
        ray_config.write_text(f'[model]\nbase = "tiny"\n[cluster]\nbackend = "ray"\naddress = "{cluster.address}"\n')
        server = _Server(ray_config, folder / "data", folder / "ray.log")
        server.workers(1)
        time.sleep(3)
        head_mib = _rss_mib([server.proc.pid])
        node_mib = _rss_mib(p for p in node_pids if psutil.pid_exists(p))
        slot_pids = [
            q.pid for q in psutil.process_iter(["cmdline"]) if "GenerationSlot" in " ".join(q.info["cmdline"] or [])
        ]
        worker_mib = _rss_mib(slot_pids[:1])
        seconds, jobs = server.run_jobs(args.jobs, args.steps)
        ray_per_job = seconds / args.jobs
        rows.append(("ray backend, 1 worker", f"{60 * args.jobs / seconds:.1f} jobs/min ({ray_per_job:.2f} s a job)"))
        worker_s = server.worker_seconds()
        overhead = [1000 * (j["finished_at"] - j["started_at"] - worker_s[j["id"]]) for j in jobs]
        rows.append(
            (
                "dispatch overhead per job (ray, 1 worker): claim to finish minus the worker's run_job",
                f"median {statistics.median(overhead):.0f} ms, max {max(overhead):.0f} ms ({len(overhead)} jobs)",
            )
        )
        second = cluster.add_node(num_cpus=1, num_gpus=1)
        server.workers(2)
        seconds, _ = server.run_jobs(args.jobs, args.steps)
        rows.append(
            ("ray backend, 2 workers", f"{60 * args.jobs / seconds:.1f} jobs/min ({seconds / args.jobs:.2f} s a job)")
        )

        # Node loss: a long job on the second node, its node killed; until the job is queued again (or taken by
        # the other worker).
        image = _sketch()
        body = {"prompt": "x", "modality": "lineart", "num_frames": 16, "width": 64, "height": 64, "steps": 150}
        victim = None
        ids = [server.post("/v1/jobs", {**body, "keyframes": [{"index": 0, "image": image}]})["id"] for _ in range(2)]
        second_name = f"{second.node_id[:8]}/0"
        while victim is None:
            for job_id in ids:
                job = server.get(f"/v1/jobs/{job_id}")
                if job["worker"] == second_name and job["progress"]["step"] >= 2:
                    victim = job_id
            time.sleep(0.05)
        lost_at = time.monotonic()
        cluster.remove_node(second, allow_graceful=False)
        while (job := server.get(f"/v1/jobs/{victim}"))["status"] == "running" and job["attempt"] == 1:
            time.sleep(0.02)
        requeue = time.monotonic() - lost_at
        rows.append(("node loss (SIGKILL of a node) to its job queued again", f"{requeue:.2f} s"))
        rows.append(("idle memory: the head's server process (RSS, no model)", f"{head_mib:.0f} MiB"))
        rows.append(("idle memory: a node's Ray processes (raylet, agents)", f"{node_mib:.0f} MiB"))
        rows.append(("idle memory: a worker with the tiny model loaded", f"{worker_mib:.0f} MiB"))
        for job_id in ids:
            urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/jobs/{job_id}", method="DELETE")
            ).close()
        server.stop()
        del first
    finally:
        cluster.shutdown()

    lines = [
        "",
        f"## Cluster (Ray {ray.__version__}, simulated nodes on one machine), {datetime.date.today()}",
        "",
        f"`python -m server.cluster.bench --jobs {args.jobs} --steps {args.steps}`: tiny model, 16 frames at 64², "
        f"{args.steps} steps a job, every job through a real server's HTTP API. Device: "
        f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only (each node\'s "GPU" is '
        "declared, the work runs on the shared cores, so 2 workers cannot be twice as fast here). "
        f"Python {platform.python_version()}.",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    print("\n".join(lines))
    path = Path(args.out)
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
