"""HTTP pieces Lens and Mimir share: the error envelope, error handlers, bearer tokens, loopback.

Both services must fail the same way (``{"error": {"code", "message", "details"}}``, never a
bare 500 page) and check tokens the same way (hashed, constant time), so it lives once here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lens.errors import LensError


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details or {}}}, status_code=status
    )


def install_error_handlers(
    app: FastAPI, log: logging.Logger, on_lens_error: Callable[[LensError], None] | None = None
) -> None:
    """Map every failure to the JSON error envelope with the right status."""

    @app.exception_handler(LensError)
    async def lens_error(_: Request, exc: LensError) -> JSONResponse:
        if on_lens_error is not None:
            on_lens_error(exc)
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return error_response(400, "bad_request", f"{where}: {first['msg']}", {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error; see server log")


def token_hashes(tokens: list[str]) -> list[bytes]:
    """Tokens are kept only as sha256 digests."""
    return [hashlib.sha256(t.encode()).digest() for t in tokens]


def bearer_ok(authorization: str, hashes: list[bytes]) -> bool:
    """Constant-time check of an ``Authorization: Bearer`` value against the digests."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    digest = hashlib.sha256(token.strip().encode()).digest()
    found = False
    for h in hashes:  # no early exit: timing says nothing about which token matched
        found |= hmac.compare_digest(digest, h)
    return found


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
