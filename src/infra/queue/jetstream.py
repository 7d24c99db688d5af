"""The production work queue: a NATS JetStream work-queue stream with one durable pull consumer.

Layout for namespace ``NS`` (letters, digits, ``_`` and ``-``):

- stream ``NS_JOBS`` on subject ``NS.jobs``: work-queue retention (an acked job is gone),
  file storage, a duplicate window so a publish retried with the same ``msg_id`` is one job;
- durable pull consumer ``workers`` shared by every worker process: explicit ack, ``ack_wait``,
  and ``max_deliver + 1`` deliveries: the extra one is never run, its receiver moves the job to
  the dead-letter stream (a worker that died on the last attempt cannot do it itself);
- stream ``NS_DLQ`` on ``NS.dlq``: dead letters (payload, original headers, reason, deliveries).
  The server's max-deliveries advisory is a backstop: whichever worker receives it (queue
  group) moves that job too.

nats-py is asyncio-only, so the client lives on a private loop thread (:class:`LoopThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from infra.health import ComponentState
from infra.queue.base import (
    DeadLetter,
    DeadLetterCallback,
    Job,
    QueueError,
    QueueUnavailable,
    exhausted_reason,
)
from infra.queue.loop import LoopThread

T = TypeVar("T")
log = logging.getLogger(__name__)

CONSUMER = "workers"
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DAY = 86_400.0


class JetStreamQueue:
    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        ack_wait_s: float = 30.0,
        max_deliver: int = 3,
        duplicate_window_s: float = 120.0,
        dlq_max_age_s: float = 14 * _DAY,
        on_dead_letter: DeadLetterCallback | None = None,
        client_name: str = "mimir-lens",
        timeout_s: float = 5.0,
    ) -> None:
        if not _NAMESPACE.match(namespace):
            raise ValueError(f"NATS namespace {namespace!r}: use letters, digits, '_' and '-' only")
        if max_deliver < 1:
            raise ValueError("max_deliver must be at least 1")
        self.namespace = namespace
        self.stream, self.subject = f"{namespace}_JOBS", f"{namespace}.jobs"
        self.dlq_stream, self.dlq_subject = f"{namespace}_DLQ", f"{namespace}.dlq"
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.duplicate_window_s = duplicate_window_s
        self.dlq_max_age_s = dlq_max_age_s
        self.on_dead_letter = on_dead_letter
        self.timeout_s = timeout_s
        self._io = LoopThread(f"nats-{namespace}")
        self._sub: Any = None
        self._fetch_lock: asyncio.Lock | None = None
        self._closing = False
        try:
            self._nc: Any = self._io.run(self._connect(url, client_name), timeout_s + 1.0)
            self._js: Any = self._nc.jetstream(timeout=timeout_s)
            self._io.run(self._ensure_streams(), timeout_s * 2)
        except BaseException as exc:
            self._io.stop()
            if isinstance(exc, ValueError):
                raise
            raise QueueUnavailable(f"NATS JetStream at {url}: {type(exc).__name__}: {exc}") from exc

    # -- WorkQueue ------------------------------------------------------------------------
    def publish(self, payload: dict[str, Any], *, msg_id: str, headers: dict[str, str] | None = None) -> bool:
        hdrs = {**(headers or {}), "Nats-Msg-Id": msg_id}
        ack = self._call(self._js.publish(self.subject, json.dumps(payload).encode(), headers=hdrs))
        return not ack.duplicate

    def fetch(self, timeout: float) -> Job | None:
        job, dead = self._call(self._fetch(timeout), timeout + self.timeout_s)
        for letter in dead:
            self._notify_dead(letter)
        return job

    def depth(self) -> int:
        info = self._call(self._js.stream_info(self.stream))
        return int(info.state.messages)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        letters: list[DeadLetter] = self._call(self._dead_letters(limit), self.timeout_s * 4)
        return letters

    def probe(self) -> ComponentState:
        detail: dict[str, Any] = {"backend": "nats", "stream": self.stream}
        if not self._nc.is_connected:
            return ComponentState("down", {**detail, "error": "not connected to NATS (reconnecting)"})
        try:
            return ComponentState("ok", {**detail, "depth": self.depth()})
        except QueueError as exc:
            return ComponentState("down", {**detail, "error": str(exc)})

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            self._io.run(self._nc.close(), self.timeout_s)
        self._io.stop()

    # -- JobOps -----------------------------------------------------------------------------
    def ack(self, job: Job) -> None:
        self._call(job.handle.ack_sync(timeout=self.timeout_s))

    def nak(self, job: Job, delay: float) -> None:
        self._call(self._then_flush(job.handle.nak(delay=delay or None)))

    def in_progress(self, job: Job) -> None:
        self._call(self._then_flush(job.handle.in_progress()))

    def term(self, job: Job, reason: str) -> None:
        letter = self._letter(job, reason, job.attempt)
        self._call(self._bury(job.handle, letter))
        self._notify_dead(letter)

    def release(self, job: Job) -> None:
        if job.attempt < self.max_deliver:
            self.nak(job, 0.0)
            return
        # A fresh copy first (its own msg id), then drop this one: the last delivery stays unspent.
        seq = job.handle.metadata.sequence.stream
        self._call(self._publish_copy(job, f"{job.msg_id}~{seq}"))
        self.ack(job)

    # -- internals ----------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run on the loop thread; every client failure becomes a :class:`QueueError`."""
        if self._nc_closed():
            coro.close()
            raise QueueError("queue is closed")
        try:
            return self._io.run(coro, timeout or self.timeout_s + 1.0)
        except (NatsError, TimeoutError, ConnectionError, OSError) as exc:
            raise QueueUnavailable(f"NATS: {type(exc).__name__}: {exc}") from exc

    def _nc_closed(self) -> bool:
        nc = getattr(self, "_nc", None)
        return nc is not None and bool(nc.is_closed)

    async def _connect(self, url: str, name: str) -> Any:
        async def on_error(exc: Exception) -> None:
            log.warning("NATS error: %s", exc)

        async def on_disconnect() -> None:
            if not self._closing:
                log.warning("NATS disconnected; reconnecting")

        connect = nats.connect(
            url,
            name=name,
            connect_timeout=max(1, int(self.timeout_s)),
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # after the first connect: keep trying, readiness says down
            reconnect_time_wait=1,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
        )
        return await asyncio.wait_for(connect, self.timeout_s)  # the first connect must not retry forever

    async def _ensure_streams(self) -> None:
        await self._upsert_stream(
            StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=self.duplicate_window_s,
            )
        )
        await self._upsert_stream(
            StreamConfig(
                name=self.dlq_stream,
                subjects=[self.dlq_subject],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=self.dlq_max_age_s,
                duplicate_window=self.duplicate_window_s,
            )
        )

    async def _upsert_stream(self, config: StreamConfig) -> None:
        try:
            await self._js.add_stream(config)
        except BadRequestError:  # exists with other settings: adopt ours where JetStream allows
            await self._js.update_stream(config)

    async def _subscription(self) -> Any:
        """The shared durable consumer (created or updated to our settings) and the DLQ advisory."""
        if self._sub is None:
            await self._js.add_consumer(
                self.stream,
                ConsumerConfig(
                    durable_name=CONSUMER,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self.ack_wait_s,
                    max_deliver=self.max_deliver + 1,
                    filter_subject=self.subject,
                ),
            )
            await self._nc.subscribe(
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{CONSUMER}",
                queue=f"{self.namespace}-dlq",
                cb=self._on_max_deliveries,
            )
            self._sub = await self._js.pull_subscribe_bind(CONSUMER, stream=self.stream)
        return self._sub

    async def _fetch(self, timeout: float) -> tuple[Job | None, list[DeadLetter]]:
        if self._fetch_lock is None:
            self._fetch_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, timeout)
        dead: list[DeadLetter] = []
        async with self._fetch_lock:  # one pull at a time per connection; others queue behind it
            sub = await self._subscription()
            while True:
                left = end - loop.time()
                try:
                    msgs = await sub.fetch(1, timeout=max(left, 0.05))
                except NatsTimeout:
                    return None, dead
                job = self._job(msgs[0])
                if job.attempt > self.max_deliver:  # the reserve delivery: never run, dead-letter it
                    letter = self._letter(job, exhausted_reason(self.max_deliver), self.max_deliver)
                    await self._bury(job.handle, letter)
                    dead.append(letter)
                    continue
                if "_malformed" in job.data:
                    reason = f"malformed job payload: {job.data['_malformed']}"
                    letter = self._letter(job, reason, job.attempt)
                    await self._bury(job.handle, letter)
                    dead.append(letter)
                    continue
                return job, dead

    def _job(self, msg: Any) -> Job:
        headers = dict(msg.headers or {})
        msg_id = headers.pop("Nats-Msg-Id", "") or f"seq-{msg.metadata.sequence.stream}"
        try:
            data = json.loads(msg.data)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            data = {"_malformed": str(exc), "raw": msg.data[:1000].decode("utf-8", "replace")}
        return Job(
            data=data,
            headers={k: v for k, v in headers.items() if not k.startswith("Nats-")},
            msg_id=msg_id,
            attempt=int(msg.metadata.num_delivered),
            max_deliver=self.max_deliver,
            ops=self,
            handle=msg,
        )

    def _letter(self, job: Job, reason: str, deliveries: int) -> DeadLetter:
        return DeadLetter(job.data, job.headers, job.msg_id, reason, deliveries, time.time())

    async def _publish_dead(self, letter: DeadLetter, seq: int) -> None:
        body = {
            "data": letter.data,
            "msg_id": letter.msg_id,
            "reason": letter.reason,
            "deliveries": letter.deliveries,
            "at": letter.at,
            "stream_seq": seq,
        }
        headers = {**letter.headers, "Nats-Msg-Id": f"dlq-{self.stream}-{seq}"}
        await self._js.publish(self.dlq_subject, json.dumps(body).encode(), headers=headers)

    async def _bury(self, msg: Any, letter: DeadLetter) -> None:
        """Dead letter first, then terminate: a crash in between leaves a redelivery, not a loss."""
        await self._publish_dead(letter, int(msg.metadata.sequence.stream))
        await msg.term()
        await self._nc.flush(self.timeout_s)

    async def _publish_copy(self, job: Job, msg_id: str) -> None:
        headers = {**job.headers, "Nats-Msg-Id": msg_id}
        await self._js.publish(self.subject, json.dumps(job.data).encode(), headers=headers)

    async def _then_flush(self, op: Coroutine[Any, Any, None]) -> None:
        if not self._nc.is_connected:
            op.close()
            raise QueueUnavailable("not connected to NATS")
        await op
        await self._nc.flush(self.timeout_s)

    async def _on_max_deliveries(self, msg: Any) -> None:
        """Backstop: a job whose reserve delivery also went unacked is moved to the DLQ here."""
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
            try:
                raw = await self._js.get_msg(self.stream, seq)
            except NotFoundError:
                return  # already settled
            headers = dict(raw.headers or {})
            msg_id = headers.pop("Nats-Msg-Id", "") or f"seq-{seq}"
            try:
                data = json.loads(raw.data or b"{}")
            except ValueError:
                data = {"raw": (raw.data or b"")[:1000].decode("utf-8", "replace")}
            letter = DeadLetter(
                data if isinstance(data, dict) else {"raw": data},
                {k: v for k, v in headers.items() if not k.startswith("Nats-")},
                msg_id,
                exhausted_reason(self.max_deliver),
                self.max_deliver,
                time.time(),
            )
            await self._publish_dead(letter, seq)
            await self._js.delete_msg(self.stream, seq)
        except Exception:
            log.exception("could not dead-letter job from advisory %r", msg.data[:500])
            return
        if self.on_dead_letter is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._notify_dead, letter)

    async def _dead_letters(self, limit: int) -> list[DeadLetter]:
        info = await self._js.stream_info(self.dlq_stream)
        if not info.state.messages:
            return []
        first, last = int(info.state.first_seq), int(info.state.last_seq)
        out: list[DeadLetter] = []
        for seq in range(max(first, 1, last - limit + 1), last + 1):
            try:
                raw = await self._js.get_msg(self.dlq_stream, seq)
            except NotFoundError:
                continue
            body = json.loads(raw.data or b"{}")
            headers = {k: v for k, v in (raw.headers or {}).items() if not k.startswith("Nats-")}
            out.append(
                DeadLetter(
                    body.get("data") or {},
                    headers,
                    str(body.get("msg_id", "")),
                    str(body.get("reason", "")),
                    int(body.get("deliveries", 0)),
                    float(body.get("at", 0.0)),
                )
            )
        return out

    def _notify_dead(self, letter: DeadLetter) -> None:
        if self.on_dead_letter is None:
            return
        try:
            self.on_dead_letter(letter)
        except Exception:  # the letter is safely in the DLQ; a failing callback must not undo that
            log.exception("dead-letter callback failed for %s", letter.msg_id)
