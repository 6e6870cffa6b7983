"""The add-on as a Blender extensions repository: GET /extensions/index.json and the archives it names.

A studio adds `http://head:8765/extensions/index.json` once in Blender's Preferences > Get Extensions (with the
server's token as the repository's access token, which Blender sends as `Authorization: Bearer`); every
artist's Blender then lists the add-on, installs it and offers its updates. The files are what
`python -m sparsectrl_blender.build --repo DATA_DIR/extensions` wrote there with Blender's own
`extension server-generate` (the index) beside the add-on's zip; this module only serves that folder, by name,
so the server never imports the add-on.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ..request.errors import RequestError

FOLDER = "extensions"  # under server.data_dir
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.(json|zip|html)")
_TYPES = {"json": "application/json", "zip": "application/zip", "html": "text/html; charset=utf-8"}


def extension_routes(data_dir: Path) -> APIRouter:
    folder = Path(data_dir) / FOLDER
    app = APIRouter()

    @app.get("/extensions/{name}", tags=["extensions"], summary="The add-on's Blender extensions repository")
    def extension_file(name: str) -> FileResponse:
        """index.json (Blender's remote repository index) or an archive it names."""
        match = _NAME.fullmatch(name)
        path = folder / name
        if match is None or not path.is_file():
            if not (folder / "index.json").is_file():
                raise RequestError(
                    "not_found",
                    f"this server offers no extensions repository: build one into {folder} with "
                    f"`python -m sparsectrl_blender.build --repo {folder}` (docs/cluster.md)",
                )
            raise RequestError("not_found", f"no {name[:80]!r} in this server's extensions repository")
        return FileResponse(path, media_type=_TYPES[match[1]])

    return app
