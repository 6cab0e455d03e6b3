"""The viewer's ASGI app: the page, Deep Zoom tiles and a JSON API around the model.

Every error is JSON ``{"error": message}`` with a 4xx/5xx status, never a traceback page. With a token, every
request must carry it (``Authorization: Bearer``, ``X-PathFLIP-Token``, ``?token=`` or the cookie the page sets).
"""

from __future__ import annotations

import hmac
import logging
from importlib import resources
from typing import Annotated, Any

import fastapi
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..eval.spec import ZERO_SHOT_TEMPLATES
from . import answers
from .encoding import NotReadyError, SlideEncodings, SlideFailedError
from .library import UnknownSlideError

logger = logging.getLogger(__name__)
TOKEN_COOKIE = "pathflip_token"
MAX_BODY_BYTES = 64 * 1024  # texts only: no uploads
STATIC = resources.files("pathflip.viewer") / "static"
JsonBody = Annotated[Any, Body()]


def create_app(encodings: SlideEncodings, *, token: str | None = None, allowed_hosts: list[str] | None = None,
               default_labels: list[str] | None = None) -> FastAPI:  # fmt: skip
    """The viewer app over prepared slides.

    Args:
        encodings: the slides and the model (see `SlideEncodings`).
        token: when set, every request must carry it.
        allowed_hosts: Host headers to answer (a loopback server lists its loopback names, so a web page that
            rebinds its own domain to 127.0.0.1 is refused); None answers any.
        default_labels: the zero-shot panel's starting labels.
    """
    app = FastAPI(title="PathFLIP viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.encodings = encodings
    _errors(app)
    _guard(app, token)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=str(STATIC), follow_symlink=False), name="static")
    library = encodings.library
    labels = default_labels or library.class_names or (encodings.bags.class_names if encodings.bags else [])
    _slide_routes(app, encodings, labels)
    _answer_routes(app, encodings)
    return app


def _slide_routes(app: FastAPI, encodings: SlideEncodings, labels: list[str]) -> None:
    """The page, the slide list, thumbnails, Deep Zoom descriptors and tiles, and slide preparation."""
    library = encodings.library

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/api/slides")
    def slides() -> dict[str, Any]:
        bags = encodings.bags
        captions = bags.captions if bags is not None else {}
        listed = [{"key": slide.key, "slide_id": slide.slide_id, "label": slide.label,
                   "caption": slide.caption or captions.get(slide.slide_id),
                   "has_bag": bags is not None and slide.slide_id in bags,
                   **encodings.status(slide.key).as_json()} for slide in library.slides.values()]  # fmt: skip
        return {"slides": listed, "labels": labels, "templates": list(ZERO_SHOT_TEMPLATES)}

    @app.get("/api/slides/{key}/thumbnail.jpg")
    def thumbnail(key: str) -> Response:
        return Response(library.thumbnail(key), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/slides/{key}/image.dzi")
    def dzi(key: str) -> Response:
        return Response(library.dzi(key), media_type="application/xml")

    @app.get("/api/slides/{key}/image_files/{level}/{tile}.jpeg")
    def tile(key: str, level: int, tile: str) -> Response:
        column, _, row = tile.partition("_")
        if not (column.isdigit() and row.isdigit()):
            raise ValueError(f"tile {tile!r} is not COLUMN_ROW (e.g. 3_5).")
        data = library.tile(key, level, int(column), int(row))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/slides/{key}/prepare")
    def prepare(key: str) -> dict[str, Any]:
        return encodings.prepare(key).as_json()

    @app.get("/api/slides/{key}/status")
    def status(key: str) -> dict[str, Any]:
        return encodings.status(key).as_json()


def _answer_routes(app: FastAPI, encodings: SlideEncodings) -> None:
    """Grounding layers (and their downloads), zero-shot probabilities and cohort search."""
    library = encodings.library

    @app.post("/api/slides/{key}/grounding")
    def grounding(key: str, body: JsonBody) -> dict[str, Any]:
        _fields(body, {"text", "top_k"})
        layers = answers.grounding_layers(encodings, key, body.get("text"), body.get("top_k", 10))
        return {"key": key, "dimensions": list(library.dimensions(key)), "layers": layers}

    @app.post("/api/slides/{key}/zero-shot")
    def zero_shot(key: str, body: JsonBody) -> dict[str, Any]:
        _fields(body, {"labels"})
        return {"key": key, "scores": answers.zero_shot(encodings, key, body.get("labels"))}

    @app.post("/api/slides/{key}/layers.geojson")
    def geojson(key: str, body: JsonBody) -> JSONResponse:
        _fields(body, {"text", "top_k"})
        collection = answers.layers_geojson(encodings, key, body.get("text"), body.get("top_k", 10))
        return JSONResponse(collection, media_type="application/geo+json", headers=_attachment(f"{key}.geojson"))

    @app.post("/api/slides/{key}/layers.png")
    def png(key: str, body: JsonBody) -> Response:
        _fields(body, {"text", "opacity"})
        data = answers.layers_png(encodings, key, body.get("text"), opacity=body.get("opacity", 0.6))
        return Response(data, media_type="image/png", headers=_attachment(f"{key}.png"))

    @app.post("/api/search")
    def search(body: JsonBody) -> dict[str, Any]:
        _fields(body, {"text", "top_k"})
        return answers.search(encodings, body.get("text"), body.get("top_k", 10))

    @app.post("/api/index")
    def index() -> dict[str, Any]:
        return {"queued": encodings.index_all(), "total": len(library.slides)}


def _fields(body: Any, allowed: set[str]) -> None:
    if not isinstance(body, dict):
        raise ValueError(f"the request body must be a JSON object with {sorted(allowed)}, got {type(body).__name__}.")
    unknown = set(body) - allowed
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; this request takes {sorted(allowed)}.")


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


def _errors(app: FastAPI) -> None:
    """Map every failure to JSON with a one-line message."""

    def reply(status: int):
        return lambda request, error: JSONResponse({"error": str(error)}, status_code=status)

    app.add_exception_handler(UnknownSlideError, reply(404))
    app.add_exception_handler(NotReadyError, reply(409))
    app.add_exception_handler(SlideFailedError, reply(422))
    app.add_exception_handler(ValueError, reply(400))

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    @app.exception_handler(HTTPException)
    def http(request: Request, error: HTTPException) -> JSONResponse:
        message = "not found" if error.status_code == 404 else str(error.detail)
        return JSONResponse({"error": message}, status_code=error.status_code)

    @app.exception_handler(Exception)
    def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("request %s failed", request.url.path)
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)


class BodyTooLargeError(fastapi.HTTPException):
    """A request body, sent without a length (chunked), grew past `MAX_BODY_BYTES` while it was read (an HTTP error,
    so that FastAPI's body parsing passes it on instead of calling it a parse error)."""

    def __init__(self) -> None:
        super().__init__(413, f"request body over {MAX_BODY_BYTES} bytes; send texts only.")


class _CountedBody:
    """ASGI middleware that counts a body's bytes as the app reads them (a chunked body has no Content-Length)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        read = 0

        async def counted():
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > MAX_BODY_BYTES:
                raise BodyTooLargeError
            return message

        await self.app(scope, counted, send)


def _guard(app: FastAPI, token: str | None) -> None:
    """Refuse oversized bodies and, with a token, requests without it."""
    app.add_middleware(_CountedBody)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            return JSONResponse({"error": f"Content-Length {length!r} is not a number of bytes."}, 400)
        if length is not None and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"request body over {MAX_BODY_BYTES} bytes; send texts only."}, 413)

        if token is not None:
            given = _given_token(request)
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"error": "this server needs its token: open the address `pathflip serve` "
                                              "printed (it ends in ?token=...)."}, 401)  # fmt: skip
        response = await call_next(request)
        if token is not None and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response


def _given_token(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return (request.headers.get("x-pathflip-token") or request.query_params.get("token")
            or request.cookies.get(TOKEN_COOKIE))  # fmt: skip
