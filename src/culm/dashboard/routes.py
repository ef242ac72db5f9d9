"""``/dashboard`` (the page and its assets), ``/dashboard/session`` (sign in and out) and
``/docs`` (Swagger UI from the package's copy, not a CDN)."""

from __future__ import annotations

import gzip
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import GZipMiddleware

from culm.api import cookie
from culm.api.deps import EngineDep

STATIC = Path(__file__).parent / "static"
# The page is small and changes with the package: let the browser revalidate it each time.
REVALIDATE = {"cache-control": "no-cache"}

# The page's own assets also live under a path naming their content's hash, which index.html
# uses: cached for good (``immutable``, no revalidation on a reload), new URLs after an upgrade.
# Relative imports between the modules keep the versioned prefix, so the whole graph is cached.
FOREVER = {"cache-control": "public, max-age=31536000, immutable"}


def _version() -> str:
    digest = hashlib.sha256()
    for path in sorted([STATIC / "style.css", *(STATIC / "js").glob("*.js")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


VERSION = _version()
VERSIONED = f"/dashboard/v/{VERSION}/"
PAGE = (STATIC / "index.html").read_bytes().replace(b"/dashboard/static/", VERSIONED.encode())
PAGE_ETAG = '"' + hashlib.sha256(PAGE).hexdigest()[:16] + '"'

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Mount the page, its assets and ``/docs`` on ``app``."""
    app.include_router(router)
    # gzip on the assets alone (a third of the bytes), never on the API's SSE streams
    assets = GZipMiddleware(_Revalidated(directory=STATIC), minimum_size=1000, compresslevel=6)
    app.mount("/dashboard/static", assets, name="dashboard-static")


class _Revalidated(StaticFiles):
    """Assets the browser checks (ETag, 304) on every load: never stale after an upgrade (the
    files' dates are the package's, so a heuristic cache could keep an old copy for days)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(REVALIDATE)
        return response


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes
    media_type: str


def _assets() -> dict[str, _Asset]:
    """The page's own files, read and gzipped once: served from memory, no file I/O per request."""
    found = {}
    for path in [STATIC / "style.css", *(STATIC / "js").glob("*.js")]:
        body = path.read_bytes()
        kind = "text/css" if path.suffix == ".css" else "text/javascript"
        found[path.relative_to(STATIC).as_posix()] = _Asset(body, gzip.compress(body, 6), kind)
    return found


ASSETS = _assets()


@router.api_route("/dashboard/v/{version}/{name:path}", methods=["GET", "HEAD"])
async def versioned(request: Request, version: str, name: str) -> Response:
    """``/dashboard/v/<hash>/<file>``: the file, cached for good when ``<hash>`` is this
    package's (an older page's hash gets today's file, revalidated)."""
    asset = ASSETS.get(name)
    if asset is None:
        error = {"code": "not_found", "message": f"no dashboard asset {name!r}"}
        return JSONResponse({"error": error}, status_code=404)
    headers = {**(FOREVER if version == VERSION else REVALIDATE), "vary": "accept-encoding"}
    body = asset.body
    if "gzip" in request.headers.get("accept-encoding", ""):
        body, headers["content-encoding"] = asset.gzipped, "gzip"
    return Response(body, media_type=asset.media_type + "; charset=utf-8", headers=headers)


@router.api_route("/dashboard", methods=["GET", "HEAD"])
@router.api_route("/dashboard/", methods=["GET", "HEAD"])
async def page(request: Request) -> Response:
    """index.html, its asset URLs naming their version; revalidated (ETag) on each load."""
    headers = {**REVALIDATE, "etag": PAGE_ETAG}
    if request.headers.get("if-none-match") == PAGE_ETAG:
        return Response(status_code=304, headers=headers)
    return Response(PAGE, media_type="text/html; charset=utf-8", headers=headers)


@router.api_route("/docs", methods=["GET", "HEAD"])
async def docs() -> FileResponse:
    return FileResponse(STATIC / "docs.html", headers=REVALIDATE)


@router.get("/dashboard/session")
async def session_state(request: Request, engine: EngineDep) -> dict[str, bool]:
    """Whether the server wants a key (``auth``) and whether this browser is signed in."""
    key = engine.settings.api_key
    if key is None:
        return {"auth": False, "signed_in": True}
    value = request.cookies.get(cookie.COOKIE)
    signed_in = value is not None and cookie.valid(key.get_secret_value(), value)
    return {"auth": True, "signed_in": signed_in}


@router.post("/dashboard/session")
async def sign_in(
    request: Request, engine: EngineDep, api_key: Annotated[str, Body(embed=True)]
) -> Response:
    """Sign in with ``CULM_API_KEY``: 204 and the session cookie, or 401."""
    key = engine.settings.api_key
    if key is None:
        return Response(status_code=204)
    if not hmac.compare_digest(api_key.encode(), key.get_secret_value().encode()):
        error = {"code": "unauthorized", "message": "that is not the server's API key"}
        return JSONResponse({"error": error}, status_code=401)
    response = Response(status_code=204)
    response.set_cookie(
        cookie.COOKIE,
        cookie.mint(key.get_secret_value()),
        max_age=cookie.LIFETIME_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_over_https(request),
    )
    return response


def _over_https(request: Request) -> bool:
    """The browser reached us over HTTPS: directly, or through a proxy that says so
    (``X-Forwarded-Proto``, ``Forwarded: proto=``). Trusting the header costs nothing: it can only
    make the cookie stricter (``Secure``), never send it over plain HTTP."""
    if request.url.scheme == "https":
        return True
    first_hop = request.headers.get("x-forwarded-proto", "").split(",")[0]
    protos = [first_hop]
    for pair in request.headers.get("forwarded", "").split(",")[0].split(";"):
        name, _, value = pair.partition("=")
        if name.strip().lower() == "proto":
            protos.append(value.strip('" '))
    return any(proto.strip().lower() == "https" for proto in protos)


@router.delete("/dashboard/session")
async def sign_out() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(cookie.COOKIE, path="/", httponly=True, samesite="strict")
    return response
