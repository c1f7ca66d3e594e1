"""The offline /docs and /redoc pages, served by a real uvicorn server on loopback: every script, style sheet and
icon they load is on that server and answers with its content type."""

from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import running_server
from tiergate.errors import ConfigError
from tiergate.gateway.docs import install_offline_docs

# Python's mimetypes says text/javascript from 3.12 on; older tables (and some /etc/mime.types) application/...
CONTENT_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}


class PageAssets(HTMLParser):
    """Every URL an HTML page makes the browser fetch as it loads: ``src`` and ``href`` of any tag."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for key, value in attrs if key in ("src", "href") and value]


def assets_of(html: str) -> list[str]:
    parser = PageAssets()
    parser.feed(html)
    return parser.urls


def docs_app() -> FastAPI:
    app = FastAPI(title="docs-test", docs_url=None, redoc_url=None)

    @app.get("/readyz")
    def readyz() -> dict:  # running_server waits for this
        return {"ready": True}

    install_offline_docs(app)
    return app


@pytest.fixture(scope="module")
def server():
    with running_server(docs_app()) as base:
        yield base


@pytest.mark.parametrize(("page", "expected"), [
    ("/docs", {"/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css", "/docs/static/favicon.png"}),
    ("/redoc", {"/docs/static/redoc.standalone.js", "/docs/static/favicon.png"}),
])
def test_page_loads_only_local_assets(server, page, expected):
    r = httpx.get(server + page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text  # no CDN, no web fonts: no other host at all
    urls = assets_of(r.text)
    assert set(urls) == expected
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        asset = httpx.get(server + url)
        assert asset.status_code == 200, url
        suffix = url[url.rindex("."):]
        assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], (url, asset.headers)
        assert len(asset.content) > 1000, url  # the real build, not a stub


def test_the_spec_the_pages_name_is_served(server):
    assert "'/openapi.json'" in httpx.get(server + "/docs").text
    assert 'spec-url="/openapi.json"' in httpx.get(server + "/redoc").text
    spec = httpx.get(server + "/openapi.json").json()
    assert "/readyz" in spec["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in spec["paths"])  # the pages are not API endpoints


def test_swagger_ui_oauth2_redirect_page(server):
    r = httpx.get(server + "/docs/oauth2-redirect")
    assert r.status_code == 200 and "oauth2" in r.text.lower()


def test_urls_follow_the_root_path():
    # as behind a proxy that forwards /gw/... to the gateway (uvicorn --root-path /gw)
    with TestClient(docs_app(), root_path="/gw") as client:
        html = client.get("/docs").text
        assert "'/gw/openapi.json'" in html
        assert all(url.startswith("/gw/docs/static/") for url in assets_of(html))


def test_an_app_with_fastapis_own_docs_is_refused():
    with pytest.raises(ConfigError, match=r"/docs.*docs_url=None"):
        install_offline_docs(FastAPI())
    with pytest.raises(ConfigError, match="openapi_url"):
        install_offline_docs(FastAPI(docs_url=None, redoc_url=None, openapi_url=None))
