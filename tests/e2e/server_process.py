"""Start the real server (`python -m server ...`) on a free loopback port, wait for it, stop or kill it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, server_python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], data_dir: Path, log_path: Path, token: str = "", port: int = 0):
        self.port = port or free_port()  # a port given: a restart where clients wait at the same address
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.data_dir = Path(data_dir)  # the job folders: data_dir/jobs/<id>/ (server/jobs/files.py)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [server_python(), "-m", "server", *args, "--port", str(self.port), "--data-dir", str(data_dir)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, timeout=30, headers=headers)
        self._wait_ready()

    @classmethod
    def tiny(cls, data_dir: Path, tiny_root: Path) -> ServerProcess:
        """`--model tiny` on a fresh data dir holding a copy of the session's tiny model (not built again)."""
        shutil.copytree(tiny_root, Path(data_dir) / "models" / "tiny")
        return cls(["--model", "tiny"], data_dir, Path(data_dir) / "server.log")

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client.get("/v1/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        self._log.close()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.client.close()
        self._log.close()

    def wait_for(self, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
