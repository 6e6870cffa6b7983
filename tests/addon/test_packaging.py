"""The zip installs with Blender's own extension install, and enables, disables and re-enables cleanly."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile

import pytest

from sparsectrl_blender.build import build
from tests.conftest import ROOT

pytest.importorskip("bpy")

_SCRIPT = r"""
import os, sys, tempfile
home = tempfile.mkdtemp()
os.environ["BLENDER_USER_RESOURCES"] = home
os.makedirs(os.path.join(home, "extensions", "user_default"))
import bpy, addon_utils

def state():
    return {
        "enabled": MOD in bpy.context.preferences.addons,
        "scene_prop": hasattr(bpy.types.Scene, "sparsectrl"),
        "classes": sorted(n for n in dir(bpy.types) if n.startswith("SPARSECTRL_")),
        "ops": sorted(n for n in dir(bpy.ops.sparsectrl)),
        "timers": [bpy.app.timers.is_registered(t) for t in TIMERS()],
    }

MOD = "bl_ext.user_default.sparsectrl_previs"
def TIMERS():
    mod = sys.modules.get(MOD + ".operators")
    return mod.TIMERS if mod else ()

result = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
print("INSTALL", result)
installed = state()
# Start the timers the panel uses (a connection check), so that disabling must remove them.
bpy.context.scene.sparsectrl.server_url = "http://127.0.0.1:9"
bpy.ops.sparsectrl.check_connection()
with_timers = state()
addon_utils.disable(MOD, default_set=True)
disabled = state()
addon_utils.enable(MOD, default_set=True)
reenabled = state()
import json
print("STATES " + json.dumps([installed, with_timers, disabled, reenabled]))
"""


def test_zip_carries_the_manifest_and_the_modules(tmp_path):
    path = build(tmp_path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert manifest == tomllib.loads((ROOT / "addon_manifest.toml").read_text())
    assert manifest["blender_version_min"] == "4.2.0" and "network" in manifest["permissions"]
    assert {"__init__.py", "operators.py", "panels.py", "passes/render.py", "batch.py"} <= names
    assert "build.py" not in names and not any("__pycache__" in n for n in names)


def test_install_enable_disable_reenable_leaves_nothing_behind(tmp_path):
    import json

    path = build(tmp_path)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(path)], capture_output=True, text=True, timeout=300)
    assert "INSTALL {'FINISHED'}" in out.stdout, out.stdout + out.stderr
    installed, with_timers, disabled, reenabled = json.loads(out.stdout.split("STATES ", 1)[1].splitlines()[0])
    assert installed["enabled"] and installed["scene_prop"]
    assert installed["classes"] == [
        "SPARSECTRL_OT_cancel",
        "SPARSECTRL_OT_check_connection",
        "SPARSECTRL_OT_generate",
        "SPARSECTRL_OT_randomize_seed",
        "SPARSECTRL_OT_report",
        "SPARSECTRL_PT_sequencer",
        "SPARSECTRL_PT_view3d",
    ]
    assert any(with_timers["timers"])
    assert not disabled["enabled"] and not disabled["scene_prop"]
    assert disabled["classes"] == [] and disabled["ops"] == [] and not any(disabled["timers"])
    assert reenabled["enabled"] and reenabled["classes"] == installed["classes"] and not any(reenabled["timers"])
