"""Build the installable extension zip: python -m sparsectrl_blender.build [--out DIR]

The zip holds this package's modules at its root, addon_manifest.toml (the single source of the manifest,
at the repository root) as blender_manifest.toml, and the wheels the manifest names: sparsectrl_passes (the
pass contract shared with the server, a pure-Python package at the repository root), which Blender installs
beside the add-on. Install it in Blender: Edit > Preferences > Get Extensions
> Install from Disk, or `blender --command extension install-file -r user_default -e ZIP`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsectrl_blender.build", description=__doc__)
    parser.add_argument("--out", default=str(PACKAGE.parent / "dist"), metavar="DIR")
    args = parser.parse_args(argv)
    print(build(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
