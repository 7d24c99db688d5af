"""Structured logs: JSON lines for log shippers, readable console lines for people, one format.

structlog renders everything -- our ``structlog`` and ``logging.getLogger`` calls, uvicorn,
libraries -- through one :class:`structlog.stdlib.ProcessorFormatter` on the root logger, so
no line escapes in another format. Every line carries the ``request_id`` the HTTP
middleware binds, the current ``trace_id``/``span_id``, and passes a redaction step, because
log pipelines are read by more people than the secrets are meant for.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from infra.observability.tracing import current_ids

LogFormat = Literal["json", "console"]
REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(
    r"(authorization|cookie|passw(or)?d|secret|token|api[_-]?key|credential|private[_-]?key)", re.I
)
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer <token> / Basic <creds>, in text or a header dump
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    # scheme://user:password@host
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), rf"\1{REDACTED}@"),
    # ?token=..&api_key=..&password=..
    (
        re.compile(
            r"(?i)([?&;\s\"']?(?:access_token|token|api[_-]?key|apikey|password|passwd|secret)=)[^&\s\"';]+"
        ),
        rf"\1{REDACTED}",
    ),
)
_HANDLER_MARK = "_mimir_lens_handler"
_DROP_KEYS = ("color_message",)  # uvicorn's duplicate of the message with ANSI codes


def resolve_format(log_format: str, environment: str) -> LogFormat:
    """``json``/``console`` when set; otherwise JSON everywhere but development."""
    if log_format in ("json", "console"):
        return log_format  # type: ignore[return-value]
    return "console" if environment == "development" else "json"


def redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth > 4:
        return value
    if isinstance(value, dict):
        return {k: _redact_item(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, depth + 1) for v in value)
    return value


def _redact_item(key: str, value: Any, depth: int) -> Any:
    # Only string secrets are hidden by key: ``token_budget=2048`` is a number, not a credential.
    if isinstance(value, str | bytes) and _SECRET_KEY.search(key):
        return REDACTED
    return _redact(value, depth)


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Hide credentials in keys (authorization=..., password=...) and inside text (URLs, headers)."""
    for key in list(event_dict):
        if key.startswith("_"):
            continue
        event_dict[key] = _redact_item(key, event_dict[key], 0)
    return event_dict


def add_trace_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ids = current_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict


def _drop_noise(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in _DROP_KEYS:
        event_dict.pop(key, None)
    return event_dict


def _service(name: str) -> Processor:
    def add(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", name)
        return event_dict

    return add


def setup_logging(
    service: str,
    *,
    environment: str = "development",
    log_format: str = "",
    level: str = "INFO",
    stream: TextIO | None = None,
) -> LogFormat:
    """Route structlog and stdlib logging through one renderer on ``stream`` (stderr); idempotent."""
    fmt = resolve_format(log_format, environment)
    json_mode = fmt == "json"
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _service(service),
        add_trace_ids,
        _drop_noise,
    ]
    if json_mode:
        shared.append(structlog.processors.format_exc_info)
    shared.append(redact_secrets)
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json_mode else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers log through the root handler, in the same format as everything else;
    # its access log stays off: the HTTP middleware logs each request with route, status and ids.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = name != "uvicorn.access"
    return fmt


def bind_request(request_id: str) -> Mapping[str, Any]:
    """Bind ``request_id`` for every log line of this request; returns tokens for :func:`unbind`."""
    return structlog.contextvars.bind_contextvars(request_id=request_id)


def unbind(tokens: Mapping[str, Any]) -> None:
    structlog.contextvars.reset_contextvars(**tokens)


__all__ = [
    "REDACTED",
    "add_trace_ids",
    "bind_request",
    "redact_secrets",
    "redact_text",
    "resolve_format",
    "setup_logging",
    "unbind",
]
