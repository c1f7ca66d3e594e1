"""API documentation pages that work offline: Swagger UI at ``/docs``, ReDoc at ``/redoc``.

FastAPI's own pages load swagger-ui and redoc from a CDN, so on a machine without internet ``/docs`` is a blank
page. These pages load the same scripts from this server instead: the PyPI package ``fastapi-offline`` ships
swagger-ui 5 and redoc 2 builds (Apache-2.0 and MIT, as its README says) in ``fastapi_offline/static``, which is
mounted at ``/docs/static``. Only those files are used, not its ``FastAPIOffline`` app factory: the gateway
builds its own app.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from tiergate.errors import ConfigError

ASSETS_PACKAGE = "fastapi_offline"  # pip name fastapi-offline; a dependency in pyproject.toml
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> Path:
    """The folder holding :data:`ASSETS`; :class:`ConfigError` when the package or a file is missing."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)  # locates the package without running its code
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the offline /docs pages need the package {ASSETS_PACKAGE!r}: "
                          "pip install 'fastapi-offline>=1.7.7' (or reinstall tiergate: pip install -e .)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    missing = [name for name in ASSETS if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"{folder}: {ASSETS_PACKAGE} lacks {', '.join(missing)}; "
                          "reinstall it: pip install --force-reinstall 'fastapi-offline>=1.7.7'")
    return folder


def install_offline_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str | None = "/redoc",
                         static_url: str = "/docs/static") -> None:
    """Serve Swagger UI at ``docs_url`` and ReDoc at ``redoc_url`` (``None``: none), their scripts, style sheet
    and icon under ``static_url``, all from this server: the pages name no other host. ``app`` must be created
    with ``docs_url=None, redoc_url=None`` (FastAPI's own CDN-backed pages would otherwise answer first) and
    with an ``openapi_url``. URLs honour the ASGI ``root_path``, as FastAPI's own pages do, so the pages work
    behind a proxy that mounts the gateway under a prefix.

    Example::

        app = FastAPI(docs_url=None, redoc_url=None)
        install_offline_docs(app)   # GET /docs, GET /redoc, GET /docs/static/swagger-ui-bundle.js, ...
    """
    if app.openapi_url is None:
        raise ConfigError("install_offline_docs: the app has openapi_url=None, so the pages have nothing to show; "
                          "leave openapi_url at its default ('/openapi.json')")
    taken = {getattr(route, "path", None) for route in app.routes} & {docs_url, redoc_url, static_url}
    if taken:
        raise ConfigError(f"install_offline_docs: the app already serves {', '.join(sorted(taken))}; create it "
                          "with FastAPI(docs_url=None, redoc_url=None) so that these pages answer there")
    folder = assets_dir()
    openapi_url = app.openapi_url
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    app.mount(static_url, StaticFiles(directory=folder), name="offline-docs-static")

    def prefix(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{static_url}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{static_url}/swagger-ui.css",
            swagger_favicon_url=f"{root}{static_url}/favicon.png",
            oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            # swagger-ui's validator badge would send the spec's URL to validator.swagger.io; the app's own
            # parameters still win
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})})

    app.add_api_route(docs_url, swagger_ui, methods=["GET"], include_in_schema=False)
    if oauth2_redirect_url:  # FastAPI adds this page only beside its own /docs
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

        app.add_api_route(oauth2_redirect_url, swagger_ui_redirect, methods=["GET"], include_in_schema=False)
    if redoc_url is not None:
        async def redoc(request: Request) -> HTMLResponse:
            root = prefix(request)
            return get_redoc_html(openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
                                  redoc_js_url=f"{root}{static_url}/redoc.standalone.js",
                                  redoc_favicon_url=f"{root}{static_url}/favicon.png", with_google_fonts=False)

        app.add_api_route(redoc_url, redoc, methods=["GET"], include_in_schema=False)
