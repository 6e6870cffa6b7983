"""Build the installable extension zip: python -m sparsectrl_blender.build [--out DIR] [--repo DIR]

The zip holds this package's modules at its root, addon_manifest.toml (the single source of the manifest,
at the repository root) as blender_manifest.toml, and the wheels the manifest names: sparsectrl_passes (the
pass contract shared with the server, a pure-Python package at the repository root), which Blender installs
beside the add-on. Install it in Blender: Edit > Preferences > Get Extensions
> Install from Disk, or `blender --command extension install-file -r user_default -e ZIP`.

With --repo DIR (the server's DATA_DIR/extensions), the zip goes into a Blender extensions repository: the
previous zips of the add-on leave, and Blender's own `extension server-generate` writes DIR/index.json, which
Blender's own `repo_json_is_valid_or_error` then checks. The server serves that folder at /extensions/, so a
studio adds one URL in Preferences > Get Extensions (docs/cluster.md). Blender's code comes from the bpy module
(pip's `bpy`, found without importing it); with a Blender instead, `blender --command extension server-generate
--repo-dir DIR` after the zip is the same step.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
MANIFEST = PACKAGE.parent / "addon_manifest.toml"
LEFT_OUT = {"build.py", "bench_passes.py"}  # the build script and the benchmark are for the repository


def build(out_dir: Path) -> Path:
    manifest_text = MANIFEST.read_text(encoding="utf-8")
    manifest = tomllib.loads(manifest_text)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", manifest_text)
        for wheel in manifest.get("wheels", []):
            zf.writestr(wheel.removeprefix("./"), pure_wheel(Path(wheel).name))
        for source in sorted(PACKAGE.rglob("*.py")):
            relative = source.relative_to(PACKAGE)
            if "__pycache__" in relative.parts or relative.name in LEFT_OUT:
                continue
            zf.write(source, relative.as_posix())
    return path


def pure_wheel(filename: str) -> bytes:
    """A py3-none-any wheel of the repository's package `name` (from NAME-VERSION-py3-none-any.whl): its .py
    files and the dist-info a wheel needs (METADATA, WHEEL, RECORD with sha256 digests)."""
    name, version, *_ = filename.removesuffix(".whl").split("-")
    source = PACKAGE.parent / name
    info = f"{name}-{version}.dist-info"
    files = {p.relative_to(source.parent).as_posix(): p.read_bytes() for p in sorted(source.rglob("*.py"))}
    files = {k: v for k, v in files.items() if "__pycache__" not in k}
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: sparsectrl_blender.build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return buf.getvalue()


class RepoError(RuntimeError):
    """The repository could not be generated or Blender's validation refused it; the message says why."""


def blender_ext_script() -> Path:
    """Blender's own extensions command-line script (bl_pkg/cli/blender_ext.py) inside the bpy module."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise RepoError("no bpy module here to take Blender's extension tools from (pip install bpy)")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    raise RepoError("the bpy module has no bl_pkg/cli/blender_ext.py")


def build_repo(repo: Path) -> Path:
    """The zip into `repo` (previous ones of the add-on removed), then Blender's server-generate writes
    repo/index.json and Blender's repo_json_is_valid_or_error checks it. Returns the index's path."""
    repo.mkdir(parents=True, exist_ok=True)
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    for old in repo.glob(f"{manifest['id']}-*.zip"):
        old.unlink()
    build(repo)
    script = blender_ext_script()
    done = subprocess.run(
        [sys.executable, str(script), "server-generate", f"--repo-dir={repo}"], capture_output=True, text=True
    )
    index = repo / "index.json"
    if done.returncode != 0 or not index.is_file():
        raise RepoError(f"Blender's server-generate failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    if problem := validate_index(index):
        raise RepoError(f"Blender refused the generated {index}: {problem}")
    ids = [entry.get("id") for entry in json.loads(index.read_text(encoding="utf-8"))["data"]]
    if manifest["id"] not in ids:
        raise RepoError(f"Blender's server-generate left {manifest['id']} out of {index}: {done.stdout[-2000:]}")
    return index


def validate_index(index: Path) -> str | None:
    """Blender's own check of a repository index (what Blender runs on a synced index.json); None when valid."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import blender_ext; "
        "print(blender_ext.repo_json_is_valid_or_error(sys.argv[2]) or 'VALID')"
    )
    script = blender_ext_script()
    done = subprocess.run([sys.executable, "-c", code, str(script.parent), str(index)], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        return f"the check did not run ({done.returncode}): {done.stderr[-1000:]}"
    return None if lines[-1] == "VALID" else lines[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsectrl_blender.build", description=__doc__)
    parser.add_argument("--out", default=str(PACKAGE.parent / "dist"), metavar="DIR")
    parser.add_argument(
        "--repo", metavar="DIR", help="build into this extensions repository (the server's DATA_DIR/extensions)"
    )
    args = parser.parse_args(argv)
    if args.repo:
        try:
            print(build_repo(Path(args.repo).expanduser()))
        except RepoError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    print(build(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
