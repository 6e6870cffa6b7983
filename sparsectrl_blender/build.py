"""Build the installable extension zip: python -m sparsectrl_blender.build [--out DIR]

The zip holds this package's modules at its root and addon_manifest.toml (the single source of the manifest,
at the repository root) as blender_manifest.toml. Install it in Blender: Edit > Preferences > Get Extensions
> Install from Disk, or `blender --command extension install-file -r user_default -e ZIP`.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
MANIFEST = PACKAGE.parent / "addon_manifest.toml"
LEFT_OUT = {"build.py"}  # the build script is for the repository, not for Blender


def build(out_dir: Path) -> Path:
    manifest_text = MANIFEST.read_text(encoding="utf-8")
    manifest = tomllib.loads(manifest_text)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", manifest_text)
        for source in sorted(PACKAGE.rglob("*.py")):
            relative = source.relative_to(PACKAGE)
            if "__pycache__" in relative.parts or relative.name in LEFT_OUT:
                continue
            zf.write(source, relative.as_posix())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsectrl_blender.build", description=__doc__)
    parser.add_argument("--out", default=str(PACKAGE.parent / "dist"), metavar="DIR")
    args = parser.parse_args(argv)
    print(build(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
