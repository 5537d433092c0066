"""The console's web app: static pages (no data in them) and the token-guarded JSON API, with strict headers."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from agentmesh.services.gateway.console._api import (
    CLIENT_KEY,
    WATCHES_KEY,
    Handler,
    Watches,
    api_routes,
    cancel_watches,
    require_token,
)
from agentmesh.services.gateway.console._upstream import GatewayClient

__all__ = ["SECURITY_HEADERS", "build_app"]

STATIC = Path(__file__).with_name("static")
# No inline script or style anywhere: every script and stylesheet is a file under /static.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_PAGES = {"/": "marketplace.html", "/login": "login.html", "/tasks": "tasks.html", "/task": "task.html"}


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer (pages, files, API, errors) carries the CSP and the other protective headers."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # 404, 405, ...: raised on, with the same headers
        _protect(exc, request)
        raise
    _protect(response, request)
    return response


def _protect(response: web.StreamResponse, request: web.Request) -> None:
    response.headers.update(SECURITY_HEADERS)
    if request.secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"


def _page(name: str) -> Handler:
    path = STATIC / name

    async def page(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Content-Type": "text/html; charset=utf-8"})

    return page


def build_app(client: GatewayClient) -> web.Application:
    """The console: pages at /, /tasks, /task?id=..., /login; files at /static; the API at /api."""
    app = web.Application(middlewares=[security_headers])
    app[CLIENT_KEY] = client
    api = web.Application(middlewares=[require_token])
    api[CLIENT_KEY] = client
    api[WATCHES_KEY] = Watches()
    api.on_shutdown.append(cancel_watches)
    api.add_routes(api_routes())
    app.add_subapp("/api/", api)
    app.add_routes([web.get(route, _page(name)) for route, name in _PAGES.items()])
    app.router.add_static("/static/", STATIC, follow_symlinks=False)

    async def close(_app: web.Application) -> None:
        await client.close()

    app.on_cleanup.append(close)
    return app
