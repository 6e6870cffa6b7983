"""The pages a browser opens: /docs and /redoc served offline, and the queue page at /.

/docs and /redoc follow FastAPI's documented self-hosting pattern (docs_url=None, redoc_url=None, then
get_swagger_ui_html / get_redoc_html pointed at local files). The Swagger UI and Redoc bundles come from the
`fastapi-standalone-docs` package (swagger-ui-dist and redoc's standalone build, with their licenses; its Redoc
is patched to load the Redocly logo from beside the page instead of a CDN). Only its files are used: its
`StandaloneDocs` helper, which replaces FastAPI's functions process-wide, is not.

The queue page (server/web/) is plain HTML, CSS and JavaScript; it reads the same API with the same token.
None of these pages or assets holds data, so they need no token (security.OPEN_PATHS); everything they show
comes from API calls that do.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = "/docs-assets"
WEB_ASSETS = "/web"
WEB_DIR = Path(__file__).resolve().parents[1] / "web"

# The queue page runs only its own script and style, and loads media only from here (or the blobs it fetched
# with the token): an injected tag in a job's prompt or owner could do nothing even if it were ever rendered.
QUEUE_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def docs_static_dir() -> Path:
    """The folder with swagger/, redoc/ and fastapi/ (favicon) inside the installed fastapi-standalone-docs."""
    return Path(str(files("fastapi_standalone_docs") / "static"))


def install_pages(app: FastAPI) -> None:
    """Add /docs, /docs/oauth2-redirect, /redoc (offline) and the queue page at / to an app built with
    docs_url=None and redoc_url=None."""
    static = docs_static_dir()

    @app.get("/", include_in_schema=False)
    @app.get(f"{WEB_ASSETS}/index.html", include_in_schema=False)  # the same page, with the same headers
    def queue_page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=QUEUE_PAGE_HEADERS)

    app.mount(DOCS_ASSETS, StaticFiles(directory=static), name="docs-assets")
    app.mount(WEB_ASSETS, StaticFiles(directory=WEB_DIR), name="web")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=f"{root}{app.swagger_ui_oauth2_redirect_url}",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/fastapi/favicon.png",
            # No online validator badge: it would send the schema's URL to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/fastapi/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/redoc/logo-mini.svg", include_in_schema=False)
    def redoc_logo() -> FileResponse:
        # The packaged Redoc asks for its footer logo at the page's path + "/logo-mini.svg".
        return FileResponse(static / "redoc" / "logo-mini.svg", media_type="image/svg+xml")
