"""#32 item 7: the add-on from the box. The server serves a Blender extensions repository that Blender's own
`server-generate` wrote and Blender's own validator accepts; Blender's own extension code (bl_pkg under the bpy
module, what `blender --command extension` runs) adds the served URL with the server's token, syncs, installs and
enables the add-on, and after a new version is built into the repository, updates it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import httpx
import pytest

from sparsectrl_blender import build
from tests.conftest import ROOT
from tests.e2e.server_process import ServerProcess

pytest.importorskip("bpy")
pytestmark = pytest.mark.slow

TOKEN = "studio-token-for-extensions"
PKG = "sparsectrl_previs"


@pytest.fixture(scope="module")
def repo_server(tmp_path_factory, tiny_root):
    folder = tmp_path_factory.mktemp("extensions_server")
    shutil.copytree(tiny_root, folder / "data" / "models" / "tiny")
    config = folder / "server.toml"
    config.write_text(f'[server]\ntoken = "{TOKEN}"\n')
    server = ServerProcess(
        ["--model", "tiny", "--config", str(config)], folder / "data", folder / "server.log", token=TOKEN
    )
    yield server
    server.stop()


def bumped_manifest(tmp_path, version: str):
    """addon_manifest.toml with another version: what the next release of the checkout builds."""
    path = tmp_path / "addon_manifest.toml"
    path.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', build.MANIFEST.read_text()))
    return path


def test_without_a_repository_the_server_says_how_to_build_one(repo_server):
    r = repo_server.client.get("/extensions/index.json")
    assert r.status_code == 404 and "python -m sparsectrl_blender.build --repo" in r.json()["error"]["message"]


def test_the_index_is_blenders_own_and_blenders_validator_refuses_a_broken_one(tmp_path):
    index = build.build_repo(tmp_path / "repo")
    data = json.loads(index.read_text())
    (entry,) = data["data"]
    assert data["version"] == "v1" and entry["id"] == PKG and entry["archive_url"] == f"./{PKG}-0.1.0.zip"
    assert entry["archive_hash"].startswith("sha256:") and entry["archive_size"] > 0
    assert build.validate_index(index) is None
    del entry["archive_hash"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    assert "archive_hash" in build.validate_index(broken)  # Blender's check, not ours


_BLENDER = r"""
import json, os, sys, tempfile
home = tempfile.mkdtemp()
os.environ["BLENDER_USER_RESOURCES"] = home
import bpy
try:
    from bl_pkg import bl_extension_cli
except ImportError:  # addons_core not on sys.path: find it in this Blender's scripts
    sys.path.append(os.path.join(bpy.utils.system_resource("SCRIPTS"), "addons_core"))
    from bl_pkg import bl_extension_cli
url, token, step = sys.argv[1:4]
extension = bl_extension_cli.cli_extension_handler  # `blender --command extension ...`
bpy.context.preferences.system.use_online_access = True  # what an artist allows on Blender's first start
for repo in bpy.context.preferences.extensions.repos:
    repo.enabled = repo.module in ("user_default", "system")  # no internet here: only the studio's repository
print("ADD", extension(["repo-add", "--url", url, "--access-token", token, "studio"]), flush=True)
print("SYNC", extension(["sync"]), flush=True)
print("INSTALL", extension(["install", "studio.sparsectrl_previs", "--enable"]), flush=True)
MOD = "bl_ext.studio.sparsectrl_previs"
folder = os.path.join(home, "extensions", "studio", "sparsectrl_previs")
def version():
    import tomllib
    with open(os.path.join(folder, "blender_manifest.toml"), "rb") as f:
        return tomllib.load(f)["version"]
print("STATE", json.dumps({"enabled": MOD in bpy.context.preferences.addons, "version": version(),
                           "panel": hasattr(bpy.types, "SPARSECTRL_PT_panel") or any(
                               n.startswith("SPARSECTRL_PT") for n in dir(bpy.types))}), flush=True)
print("READY", flush=True)
sys.stdin.readline()  # the test builds the next version into the repository meanwhile
print("SYNC2", extension(["sync"]), flush=True)
print("UPDATE", extension(["update"]), flush=True)
print("STATE2", json.dumps({"enabled": MOD in bpy.context.preferences.addons, "version": version()}), flush=True)
import importlib
importlib.import_module(MOD + ".core.shutdown").exit_process(0)
"""


def test_blender_installs_the_add_on_from_the_server_and_updates_it(repo_server, tmp_path, monkeypatch):
    repo = repo_server.data_dir / "extensions"
    build.build_repo(repo)
    url = f"{repo_server.url}/extensions/index.json"
    assert httpx.get(url).status_code == 401  # the repository needs the server's token, as the API does
    served = repo_server.client.get("/extensions/index.json")
    assert served.status_code == 200 and served.json() == json.loads((repo / "index.json").read_text())
    assert repo_server.client.get(f"/extensions/{PKG}-0.1.0.zip").content == (repo / f"{PKG}-0.1.0.zip").read_bytes()
    for bad in ("..%2Fjobs.sqlite3", "jobs.sqlite3", "%2Fetc%2Fpasswd", "x.py"):
        assert repo_server.client.get(f"/extensions/{bad}").status_code == 404, bad

    script = tmp_path / "blender.py"
    script.write_text(_BLENDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), url, TOKEN, "install"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("READY"):
            break
    monkeypatch.setattr(build, "MANIFEST", bumped_manifest(tmp_path, "0.1.1"))
    build.build_repo(repo)  # the studio builds the next version into the same repository
    assert sorted(p.name for p in repo.glob("*.zip")) == [f"{PKG}-0.1.1.zip"]
    out, _ = proc.communicate("go\n", timeout=300)
    text = "".join(lines) + out
    assert proc.returncode == 0, text[-4000:]
    results = dict(re.findall(r"(?m)^(ADD|SYNC|INSTALL|SYNC2|UPDATE) (\d+)$", text))
    assert results == {"ADD": "0", "SYNC": "0", "INSTALL": "0", "SYNC2": "0", "UPDATE": "0"}, text[-4000:]
    first = json.loads(re.search(r"(?m)^STATE (.*)$", text)[1])
    assert first == {"enabled": True, "version": "0.1.0", "panel": True}, text[-4000:]
    assert json.loads(re.search(r"(?m)^STATE2 (.*)$", text)[1]) == {"enabled": True, "version": "0.1.1"}
