"""A real simulated Ray cluster (ray.cluster_utils.Cluster: a head and nodes that declare one GPU each, as
separate raylet processes on this machine) and a real server process driving it with [cluster] backend = "ray".

One per test module; the tests of a module run in one test process (xdist_group), in file order.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")

from tests.e2e.server_process import ServerProcess  # noqa: E402

# Quicker node-loss detection than Ray's default (~20 s), with some slack: the suite's other test process shares
# the two cores, and a raylet starved for longer than threshold x timeout would be taken for dead.
HEALTH_CHECKS = {
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 5,
    "health_check_timeout_ms": 1000,
    "health_check_initial_delay_ms": 0,
}
QUIET_RAY = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


class SimulatedCluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.cluster = ray_cluster_utils.Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": HEALTH_CHECKS},
        )
        self.nodes: list = []
        self.servers: list[ServerProcess] = []
        self.config = folder / "server.toml"
        self.config.write_text(
            f'[model]\nbase = "tiny"\n[cluster]\nbackend = "ray"\naddress = "{self.cluster.address}"\n'
            "start_timeout_s = 120\n"
        )

    def add_node(self):
        node = self.cluster.add_node(num_cpus=1, num_gpus=1)
        self.nodes.append(node)
        return node

    def remove_node(self, node=None):
        node = node or self.nodes[-1]
        self.nodes.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)  # SIGKILL: the box is gone

    def start_server(self, name: str = "server", port: int = 0) -> ServerProcess:
        server = ServerProcess(
            ["--config", str(self.config)], self.folder / "data", self.folder / f"{name}.log", port=port
        )
        self.servers.append(server)
        return server

    def wait_workers(self, server: ServerProcess, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = server.client.get("/v1/health").json()["workers"]
            if len(workers) == count and all(w["state"] in ("idle", "running") for w in workers):
                return workers
            time.sleep(0.2)
        raise TimeoutError(f"not {count} workers after {timeout} s: {workers}")

    def shutdown(self) -> None:
        for server in self.servers:
            if server.proc.poll() is None:
                server.stop()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def simulated_cluster(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in QUIET_RAY}
    os.environ.update(QUIET_RAY)
    cluster = SimulatedCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
