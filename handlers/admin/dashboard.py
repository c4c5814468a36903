"""Operators: GET /admin/ — the dashboard page, one static HTML file with inline JS and SVG.

The page is served without the admin token on purpose: it holds no data. It asks the
operator for the token, keeps it in sessionStorage, and every data call it makes
(/admin/metrics) carries `Authorization: Bearer <token>` and is checked there.
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

PAGE = Path(__file__).with_name("dashboard.html")


async def page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE.read_bytes(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                                            "style-src 'unsafe-inline'; img-src data:"})
