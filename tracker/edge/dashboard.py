"""`/dashboard`: the web dashboard, static files shipped in the package.

HTML, CSS and JS under static/dashboard/ (Apache ECharts committed as its minified
release, with its licence): no build step. The page asks for an API key and draws with
the JSON API (`/api/me`, `/api/reports`, `/api/live`), so it shows exactly what the key may
see. Files are read once per process and served from memory.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

FOLDER = Path(__file__).with_name("static") / "dashboard"
DASHBOARD = web.AppKey("dashboard_files", dict)


def load(folder: Path = FOLDER) -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file():
            kind = mimetypes.guess_type(path.name)[0] or "text/plain"
            files[path.name] = (path.read_bytes(), kind)
    return files


async def index(request: web.Request) -> web.Response:
    if request.path == "/dashboard":
        raise web.HTTPFound("/dashboard/")
    return _file(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    return _file(request, request.match_info["name"])


def _file(request: web.Request, name: str) -> web.Response:
    found = request.app[DASHBOARD].get(name)
    if found is None:
        raise web.HTTPNotFound()
    body, kind = found
    cache = "no-cache" if name == "index.html" else "public, max-age=3600"
    charset = "utf-8" if kind.startswith("text/") or kind.endswith("javascript") else None
    return web.Response(
        body=body, content_type=kind, charset=charset, headers={"Cache-Control": cache}
    )


def add_routes(app: web.Application) -> None:
    app[DASHBOARD] = load()
    app.router.add_get("/dashboard", index)
    app.router.add_get("/dashboard/", index)
    app.router.add_get("/dashboard/{name}", asset)
