"""docs/cluster.md as it is followed: scripts/cluster-trial.sh runs its steps with real `ray start` processes
(token mode, a head, two GPU nodes, intruders refused, the server with an explicit address, a job, a node taken
out), and every flag of the doc's `ray start` commands is one the trial runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, server_python
from tests.e2e.server_process import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-cluster")]
pytest.importorskip("ray")

TRIAL = ROOT / "scripts" / "cluster-trial.sh"


def ray_start_flags(text: str) -> set[str]:
    """The --flags of every `ray start` command in `text` (continuation lines joined)."""
    joined = re.sub(r"\\\s*\n\s*", " ", text)
    return {flag for line in joined.splitlines() if "ray start" in line for flag in re.findall(r"--[a-z-]+", line)}


def test_the_docs_ray_start_flags_are_the_ones_the_trial_runs():
    doc = (ROOT / "docs" / "cluster.md").read_text()
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", doc, re.S))
    trial = TRIAL.read_text()
    assert {"--head", "--address", "--disable-usage-stats", "--include-dashboard", "--port"} <= ray_start_flags(blocks)
    missing = ray_start_flags(blocks) - set(re.findall(r"--[a-z-]+", trial))
    assert not missing, f"docs/cluster.md runs flags the trial does not: {missing}"
    for variable in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN=", "RAY_USAGE_STATS_ENABLED=0", "RAY_health_check"):
        assert variable in blocks and variable in trial, variable


def test_the_docs_steps_run_on_one_box(tmp_path):
    ray = Path(server_python()).parent / "ray"
    base = 20000 + (os.getpid() % 300) * 100
    env = {
        **os.environ,
        "PORT": str(free_port()),
        "HTTP_PORT": str(free_port()),
        "CLIENT_PORT": str(free_port()),
        "PORT_BASE": str(base),
        "PYTHON": server_python(),
        "RAY": str(ray if ray.exists() else Path(sys.executable).parent / "ray"),
        "PYTHONPATH": str(ROOT),
    }
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(key, None)
    out = subprocess.run(
        ["bash", str(TRIAL), str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp_path.glob("*.log")))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + logs
    assert "wrong-token: refused" in out.stdout and "token-without-mode: refused" in out.stdout
    assert re.search(r"job \w+ succeeded on", out.stdout), out.stdout
    assert "workers after taking a node out:" in out.stdout
    head = (tmp_path / "head.log").read_text()
    assert "Token authentication is disabled" not in head  # the head runs in token mode
