"""The zip installs with Blender's own extension install, and enables, disables and re-enables cleanly."""

from __future__ import annotations

import io
import subprocess
import sys
import tomllib
import zipfile

import pytest

from sparsectrl_blender.build import build
from tests.conftest import ROOT

pytest.importorskip("bpy")

WHEEL = "sparsectrl_passes-0.1.0-py3-none-any.whl"

_SCRIPT = r"""
import os, sys, tempfile
home = tempfile.mkdtemp()
os.environ["BLENDER_USER_RESOURCES"] = home
os.makedirs(os.path.join(home, "extensions", "user_default"))
import bpy, addon_utils

def state():
    return {
        "enabled": MOD in bpy.context.preferences.addons,
        "scene_prop": [hasattr(bpy.types.Scene, name) for name in ("sparsectrl", "sparsectrl_look")],
        "classes": sorted(n for n in dir(bpy.types) if n.startswith("SPARSECTRL_")),
        "ops": sorted(n for n in dir(bpy.ops.sparsectrl)),
        "timers": [bpy.app.timers.is_registered(t) for t in TIMERS()],
        "token_field": MOD in bpy.context.preferences.addons
        and hasattr(bpy.context.preferences.addons[MOD].preferences, "token"),
    }

MOD = "bl_ext.user_default.sparsectrl_previs"
def TIMERS():
    mod = sys.modules.get(MOD + ".blender.operators")
    return mod.TIMERS if mod else ()

result = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
print("INSTALL", result)
import sparsectrl_passes.process
print("PASSES", os.path.relpath(sparsectrl_passes.process.__file__, home))  # the wheel Blender installed
installed = state()
# The token typed in the add-on's preferences is what the panel sends.
bpy.context.preferences.addons[MOD].preferences.token = "s3cret"
print("TOKEN", sys.modules[MOD + ".blender.preferences"].token())
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
# The batch in the artist's own Blender (README): the installed extension's module, its arguments after `--`.
sys.argv = ["blender", "-b", "--python-expr", "...", "--", os.path.join(home, "missing.blend"), "--prompt", "x"]
from bl_ext.user_default.sparsectrl_previs import batch
print("BATCH", batch.main(), flush=True)
# End as a command on bpy 4.2/4.5 must (docs/troubleshooting.md), with the add-on's own shipped helper.
import importlib
importlib.import_module(MOD + ".core.shutdown").exit_process(0)
"""


def test_zip_carries_the_manifest_and_the_modules(tmp_path):
    path = build(tmp_path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert manifest == tomllib.loads((ROOT / "addon_manifest.toml").read_text())
    assert manifest["blender_version_min"] == "4.2.0" and "network" in manifest["permissions"]
    assert {"__init__.py", "blender/operators.py", "blender/panels.py", "blender/passes.py", "core/client.py"} <= names
    assert "batch.py" in names and manifest["wheels"] == ["./wheels/sparsectrl_passes-0.1.0-py3-none-any.whl"]
    with zipfile.ZipFile(path) as zf, zipfile.ZipFile(io.BytesIO(zf.read("wheels/" + WHEEL))) as wheel:
        assert wheel.read("sparsectrl_passes/process.py") == (ROOT / "sparsectrl_passes" / "process.py").read_bytes()
        assert "Root-Is-Purelib: true" in wheel.read("sparsectrl_passes-0.1.0.dist-info/WHEEL").decode()
    assert "build.py" not in names and not any("__pycache__" in n for n in names)


# The extensions platform's limits, as Blender's own validator applies them (bl_pkg/cli/blender_ext.py:
# TERSE_DESCRIPTION_MAX_LENGTH, pkg_manifest_validate_terse_description_or_error, ..._field_permissions).
TERSE_MAX = 64
PERMISSIONS = {"files", "network", "clipboard", "camera", "microphone"}
REQUIRED = set("schema_version id version name tagline maintainer type license blender_version_min".split())


def _terse_problem(text: str) -> str | None:
    if len(text) > TERSE_MAX:
        return f"{len(text)} characters (at most {TERSE_MAX})"
    if text != text.strip() or any(ord(c) < 32 for c in text):
        return "surrounding spaces or control characters"
    if not (text[-1].isalnum() or text[-1] in ")]}"):
        return "ends in punctuation"
    return None


def test_manifest_keeps_the_platforms_limits():
    manifest = tomllib.loads((ROOT / "addon_manifest.toml").read_text())
    assert REQUIRED <= set(manifest), REQUIRED - set(manifest)
    assert _terse_problem(manifest["tagline"]) is None, ("tagline", _terse_problem(manifest["tagline"]))
    assert set(manifest["permissions"]) <= PERMISSIONS
    for key, reason in manifest["permissions"].items():
        assert _terse_problem(reason) is None, (key, _terse_problem(reason))
    assert manifest["id"].isidentifier() and not manifest["id"].startswith("_")
    assert all(part.isdigit() for part in manifest["version"].split(".")) and manifest["version"].count(".") == 2
    assert all(lic.startswith("SPDX:") for lic in manifest["license"])
    assert _terse_problem("x" * 65) and _terse_problem("Writes files.") and _terse_problem("Formats (PNG)") is None


# `blender --command extension validate ZIP`: the same function, reached under the bpy module.
_VALIDATE = r"""
import os, sys
import bpy
try:
    from bl_pkg import bl_extension_cli
except ImportError:  # addons_core not on sys.path: find it in this Blender's scripts
    sys.path.append(os.path.join(bpy.utils.system_resource("SCRIPTS"), "addons_core"))
    from bl_pkg import bl_extension_cli
from sparsectrl_blender.core.shutdown import exit_process

for path in sys.argv[1:]:
    print("VALIDATE", os.path.basename(path), bl_extension_cli.cli_extension_handler(["validate", path]), flush=True)
exit_process(0)
"""


def test_blenders_own_validator_accepts_the_zip(tmp_path):
    path = build(tmp_path)
    # A control the validator must refuse: the same zip with a tagline one character too long.
    bad = tmp_path / "bad" / path.name
    bad.parent.mkdir()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "blender_manifest.toml":
                tagline = tomllib.loads(data.decode())["tagline"]
                data = data.decode().replace(tagline, "x" * (TERSE_MAX + 1)).encode()
            dst.writestr(item, data)
    out = subprocess.run(
        [sys.executable, "-c", _VALIDATE, str(path), str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    good_line, bad_line = [line for line in out.stdout.splitlines() if line.startswith("VALIDATE")]
    assert good_line.endswith(" 0") and "Success parsing TOML" in out.stdout, out.stdout
    assert bad_line.endswith(" 1") and f"no longer than {TERSE_MAX} characters expected" in out.stdout, out.stdout


def test_install_enable_disable_reenable_leaves_nothing_behind(tmp_path):
    import json

    path = build(tmp_path)
    # Run away from the repository, so the pass contract can only come from the zip's wheel.
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert "INSTALL {'FINISHED'}" in out.stdout, out.stdout + out.stderr
    assert out.stdout.split("PASSES ", 1)[1].split()[0].startswith("extensions/.local/lib/python"), out.stdout
    assert out.returncode == 0, out.stderr[-2000:]
    installed, with_timers, disabled, reenabled = json.loads(out.stdout.split("STATES ", 1)[1].splitlines()[0])
    assert installed["enabled"] and all(installed["scene_prop"]) and installed["token_field"]
    assert "TOKEN s3cret" in out.stdout  # the preferences belong to the add-on's module, not its blender/ folder
    assert installed["classes"] == [
        "SPARSECTRL_OT_cancel",
        "SPARSECTRL_OT_check_connection",
        "SPARSECTRL_OT_generate",
        "SPARSECTRL_OT_randomize_seed",
        "SPARSECTRL_OT_reference_add",
        "SPARSECTRL_OT_reference_from_frame",
        "SPARSECTRL_OT_reference_remove",
        "SPARSECTRL_OT_report",
        "SPARSECTRL_PT_sequencer",
        *(f"SPARSECTRL_PT_sequencer_{k}" for k in ("depth", "generation", "keyframes", "look", "reference", "takes")),
        "SPARSECTRL_PT_view3d",
        *(f"SPARSECTRL_PT_view3d_{k}" for k in ("depth", "generation", "keyframes", "look", "reference", "takes")),
    ]
    assert any(with_timers["timers"])
    assert not disabled["enabled"] and not any(disabled["scene_prop"])
    assert disabled["classes"] == [] and disabled["ops"] == [] and not any(disabled["timers"])
    assert reenabled["enabled"] and reenabled["classes"] == installed["classes"] and not any(reenabled["timers"])
