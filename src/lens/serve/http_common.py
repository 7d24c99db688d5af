"""HTTP pieces Lens and Mimir share: the error envelope, error handlers, the request gate, loopback.

Both services must fail the same way (``{"error": {"code", "message", "details"}}``, never a
bare 500 page) and admit requests the same way (infra.auth: hashed tokens in constant time,
JWTs; then per-caller rate limits; bounded bodies), so it lives once here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.auth import (
    WELL_KNOWN_PATH,
    Authenticator,
    Denial,
    Principal,
    authenticator_from_settings,
)
from infra.auth import request_base_url as _base_url
from infra.ratelimit import RateLimiter
from infra.settings import ConfigurationError, enforce, is_loopback_host
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


class UnsafeConfiguration(LensError):
    """The settings fail the pre-flight check (infra.settings.problems); each problem is listed."""

    code = "unsafe_configuration"
    status = 500


def admission(settings: Any, log: logging.Logger) -> Authenticator:
    """Refuse unsafe settings (outside development) and build the authenticator, at app creation."""
    try:
        enforce(settings, log)
        return authenticator_from_settings(settings)
    except ConfigurationError as exc:
        lines = "\n  - ".join(exc.problems[1:])
        raise UnsafeConfiguration(
            f"{exc.problems[0]}:\n  - {lines}", details={"problems": exc.problems[1:]}
        ) from None
    except ValueError as exc:
        raise UnsafeConfiguration(f"authentication settings: {exc}") from None


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


class RequestGate:
    """Who may call, how often: authentication, then a per-caller rate limit (by principal, else IP).

    The principal lands in ``scope["state"]["principal"]`` (``request.state.principal``: a
    :class:`~infra.auth.Principal`, or None when auth is off) for rate limits and audit logs.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        limiter: RateLimiter | None,
        *,
        realm: str,
        public_paths: Collection[str],
        resource_metadata: bool = False,
        public_url: str | None = None,
        on_limited: Callable[[], None] | None = None,
    ) -> None:
        self.on_limited = on_limited
        self.authenticator = authenticator
        self.limiter = limiter
        self.realm = realm
        self.public_paths = public_paths
        self.resource_metadata = resource_metadata
        self.public_url = public_url

    async def refusal(self, scope: Scope) -> JSONResponse | None:
        """The 401/403/429 response for this request, or None to let it through."""
        if scope["path"] in self.public_paths:
            return None
        principal: Principal | None = None
        if self.authenticator.enabled:
            outcome = self.authenticator.authenticate(_header(scope, b"authorization"))
            if isinstance(outcome, Denial):
                return self._denied(scope, outcome)
            principal = outcome
        scope.setdefault("state", {})["principal"] = principal
        if self.limiter is None:
            return None
        client = scope.get("client")
        key = principal.id if principal else f"ip:{client[0] if client else 'unknown'}"
        decision = await anyio.to_thread.run_sync(self.limiter.hit, key)
        if decision.allowed:
            return None
        if self.on_limited is not None:
            self.on_limited()
        retry = max(1, math.ceil(decision.retry_after_s))
        response = error_response(
            429,
            "rate_limited",
            f"more than {decision.limit} requests per minute; retry in {retry}s",
            {"limit": decision.limit, "retry_after_s": retry},
        )
        response.headers["Retry-After"] = str(retry)
        return response

    def _denied(self, scope: Scope, denial: Denial) -> JSONResponse:
        metadata = None
        if self.resource_metadata:
            base = _base_url(scope.get("scheme", "http"), scope["headers"], self.public_url)
            metadata = base + WELL_KNOWN_PATH
        response = error_response(denial.status, denial.code, denial.message)
        response.headers["WWW-Authenticate"] = denial.challenge(self.realm, metadata)
        return response

    def close(self) -> None:
        if self.limiter is not None:
            self.limiter.close()


class BodySizeLimit:
    """413 for request bodies over ``max_bytes``, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return error_response(413, "too_large", f"request body over {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length and length.strip().isdigit() and int(length) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        seen = 0
        exceeded = started = replaced = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True  # the app sees a disconnect; whatever it answers becomes a 413
                    return {"type": "http.disconnect"}
            return message

        async def replacing_send(message: Message) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start" and not started:
                started = True
                if exceeded:
                    replaced = True
                    await self._too_large()(scope, receive, send)
            if not replaced:
                await send(message)

        try:
            await self.app(scope, counting_receive, replacing_send)
        except Exception:
            if not exceeded or (started and not replaced):
                raise
        if exceeded and not started:
            await self._too_large()(scope, receive, send)


def is_loopback(host: str) -> bool:
    return is_loopback_host(host)
