"""The widget's files: the demo helpdesk page (/), the one-tag embeddable widget (/widget.js), and the
console's own script and style (/console/static/...)."""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
DEMO_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
CONSOLE_FILES = {"console.js": "application/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}

router = APIRouter(tags=["widget"])


@functools.cache
def static(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


@router.get("/", response_class=HTMLResponse)
async def demo_page() -> Response:
    return HTMLResponse(static("demo.html"), headers={"Content-Security-Policy": DEMO_CSP})


@router.get("/widget.js")
async def widget_js() -> Response:
    return Response(static("widget.js"), media_type="application/javascript; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=300"})


@router.get("/console/static/{name}")
async def console_static(name: str) -> Response:
    if name not in CONSOLE_FILES:
        return JSONResponse({"error": "not_found", "message": "no such file"}, status_code=404)
    return Response(static(name), media_type=CONSOLE_FILES[name], headers={"Cache-Control": "no-cache"})


@router.get("/console/")
async def console_slash() -> Response:
    return RedirectResponse("/console", status_code=308)
