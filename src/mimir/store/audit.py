"""Audit entries around state-changing actions: who did what to which target, and how it ended.

A failed or refused action is recorded with its error code (best effort: when the database
itself is the failure, the original error wins). A successful action must be recorded, so a
failure to write its entry is an error (503), never silently dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lens.errors import LensError
from mimir.store.base import MetadataStore

log = logging.getLogger("mimir.store.audit")


@dataclass
class AuditDraft:
    """What the entry will say; the action may refine ``target`` and add to ``detail``."""

    target: str | None
    detail: dict[str, Any] = field(default_factory=dict)


def principal_name(principal: object) -> str:
    """A loggable caller name: ``Principal.id``, a plain string, or "anonymous"."""
    name = getattr(principal, "id", None) or principal
    return str(name) if name else "anonymous"


@contextmanager
def audited(
    store: MetadataStore,
    action: str,
    principal: object,
    target: str | None,
    detail: dict[str, Any] | None = None,
) -> Iterator[AuditDraft]:
    draft = AuditDraft(target, dict(detail or {}))
    who = principal_name(principal)
    try:
        yield draft
    except LensError as exc:
        try:
            store.audit(action, who, draft.target, {**draft.detail, "outcome": exc.code})
        except LensError as audit_exc:
            log.warning("audit entry for failed %s dropped: %s", action, audit_exc.message)
        raise
    store.audit(action, who, draft.target, {**draft.detail, "outcome": "ok"})
