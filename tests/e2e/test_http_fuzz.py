"""Fuzzing: schemathesis against the server's own OpenAPI schema on loopback, bounded: zero 5xx."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 40


def test_schemathesis_finds_no_server_error(configured_server, tmp_path):
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is in the dev extra"
    out = subprocess.run(
        [
            cli,
            "run",
            f"{configured_server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "-n",
            str(EXAMPLES_PER_OPERATION),
            "--generation-deterministic",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # schemathesis writes its .schemathesis/ cache here, not into the checkout
    )
    summary = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    print(summary.group(0) if summary else out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-5000:]
    assert summary and summary.group(1) == summary.group(2) and int(summary.group(1)) > 300
    assert "Traceback" not in configured_server.log()
