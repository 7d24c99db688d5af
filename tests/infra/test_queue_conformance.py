"""One behaviour suite, run against the embedded MemoryQueue and a real NATS JetStream queue.

Each JetStream test uses a fresh namespace on the shared server and deletes its streams after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nats_server import SHARED_URL, NatsServer, delete_namespace, fresh_namespace

from infra.queue import DeadLetter, Job, MemoryQueue, WorkQueue, exhausted_reason
from infra.queue.jetstream import JetStreamQueue

MakeQueue = Callable[..., WorkQueue]


@pytest.fixture(params=["memory", "jetstream"])
def make_queue(request: pytest.FixtureRequest) -> Iterator[MakeQueue]:
    """make_queue(ack_wait_s=..., max_deliver=..., on_dead_letter=...) -> a consumer of one shared queue.

    Calls within a test share the queue: for JetStream each call is its own connection (like
    separate worker processes); the memory queue is one object used from several threads.
    """
    namespace = fresh_namespace()
    made: list[WorkQueue] = []
    shared: dict[str, MemoryQueue] = {}

    def make(**kwargs: Any) -> WorkQueue:
        queue: WorkQueue
        if request.param == "memory":
            if "q" not in shared:
                shared["q"] = MemoryQueue(**kwargs)
            queue = shared["q"]
        else:
            queue = JetStreamQueue(SHARED_URL, namespace=namespace, **kwargs)
        made.append(queue)
        return queue

    try:
        yield make
    finally:
        for q in made:
            q.close()
        if request.param == "jetstream":
            delete_namespace(SHARED_URL, namespace)


def test_publish_fetch_ack(make_queue: MakeQueue) -> None:
    q = make_queue(ack_wait_s=5)
    assert q.publish({"n": 1, "nested": {"a": [1, 2]}}, msg_id="m1", headers={"traceparent": "00-abc-01"})
    assert q.depth() == 1
    job = q.fetch(timeout=3)
    assert job is not None
    assert job.data == {"n": 1, "nested": {"a": [1, 2]}}
    assert job.headers == {"traceparent": "00-abc-01"}
    assert (job.msg_id, job.attempt, job.num_delivered) == ("m1", 1, 1)
    job.ack()
    assert q.fetch(timeout=0.5) is None
    assert q.depth() == 0
    assert q.probe().state == "ok"


def test_nak_redelivers_and_delay_is_honoured(make_queue: MakeQueue) -> None:
    q = make_queue(ack_wait_s=10, max_deliver=5)
    q.publish({"n": 1}, msg_id="m1")
    first = q.fetch(timeout=3)
    assert first is not None
    first.nak()
    second = q.fetch(timeout=3)
    assert second is not None and second.data == {"n": 1} and second.attempt == 2
    started = time.monotonic()
    second.nak(delay=1.5)
    assert q.fetch(timeout=0.7) is None  # not before the delay
    third = q.fetch(timeout=4)
    assert third is not None and third.attempt == 3
    assert time.monotonic() - started >= 1.3
    third.ack()


def test_unacked_job_is_redelivered_after_ack_wait(make_queue: MakeQueue) -> None:
    q = make_queue(ack_wait_s=1, max_deliver=5)
    q.publish({"n": 1}, msg_id="m1")
    job = q.fetch(timeout=3)
    assert job is not None
    started = time.monotonic()
    again = q.fetch(timeout=5)  # nobody acked: it comes back once the ack wait is over
    assert again is not None and again.msg_id == "m1" and again.attempt == 2
    assert time.monotonic() - started >= 0.8
    again.ack()


def test_in_progress_keeps_the_job(make_queue: MakeQueue) -> None:
    holder = make_queue(ack_wait_s=1, max_deliver=5)
    other = make_queue(ack_wait_s=1, max_deliver=5)
    holder.publish({"n": 1}, msg_id="m1")
    job = holder.fetch(timeout=3)
    assert job is not None
    seen: list[Job] = []
    stop = threading.Event()

    def poach() -> None:
        while not stop.is_set():
            got = other.fetch(timeout=0.3)
            if got is not None:
                seen.append(got)

    thief = threading.Thread(target=poach)
    thief.start()
    try:
        for _ in range(9):  # 3 s held = 3 ack waits, kept alive by heartbeats every ack_wait/3
            time.sleep(1 / 3)
            job.in_progress()
    finally:
        stop.set()
        thief.join()
    assert seen == []
    job.ack()
    assert other.fetch(timeout=1.5) is None


def test_term_dead_letters_with_the_reason(make_queue: MakeQueue) -> None:
    letters: list[DeadLetter] = []
    q = make_queue(ack_wait_s=5, max_deliver=3, on_dead_letter=letters.append)
    q.publish({"run_id": "r1"}, msg_id="m1", headers={"traceparent": "00-t-01"})
    job = q.fetch(timeout=3)
    assert job is not None
    job.term("repository vanished")
    assert q.fetch(timeout=0.5) is None
    assert q.depth() == 0
    assert [(d.msg_id, d.reason, d.deliveries, d.data) for d in letters] == [
        ("m1", "repository vanished", 1, {"run_id": "r1"})
    ]
    stored = q.dead_letters()
    assert [(d.msg_id, d.reason, d.data, d.headers) for d in stored] == [
        ("m1", "repository vanished", {"run_id": "r1"}, {"traceparent": "00-t-01"})
    ]


def test_max_deliver_without_ack_dead_letters(make_queue: MakeQueue) -> None:
    letters: list[DeadLetter] = []
    q = make_queue(ack_wait_s=1, max_deliver=2, on_dead_letter=letters.append)
    q.publish({"run_id": "r1"}, msg_id="m1")
    attempts = []
    for _ in range(2):  # take it and "die" each time
        job = q.fetch(timeout=4)
        assert job is not None
        attempts.append(job.attempt)
    assert attempts == [1, 2]
    assert q.fetch(timeout=3) is None  # the spent job is not handed out again ...
    assert [(d.msg_id, d.reason, d.deliveries) for d in letters] == [("m1", exhausted_reason(2), 2)]
    assert [d.msg_id for d in q.dead_letters()] == ["m1"]  # ... it is in the dead-letter queue
    assert q.depth() == 0


def test_nak_on_last_delivery_dead_letters(make_queue: MakeQueue) -> None:
    letters: list[DeadLetter] = []
    q = make_queue(ack_wait_s=5, max_deliver=2, on_dead_letter=letters.append)
    q.publish({"n": 1}, msg_id="m1")
    for attempt in (1, 2):
        job = q.fetch(timeout=3)
        assert job is not None and job.attempt == attempt
        assert job.last_attempt == (attempt == 2)
        job.nak()
    assert q.fetch(timeout=1.5) is None
    assert [(d.msg_id, d.reason) for d in letters] == [("m1", exhausted_reason(2))]


def test_release_on_last_delivery_does_not_spend_it(make_queue: MakeQueue) -> None:
    letters: list[DeadLetter] = []
    q = make_queue(ack_wait_s=5, max_deliver=2, on_dead_letter=letters.append)
    q.publish({"n": 1}, msg_id="m1", headers={"traceparent": "00-r-01"})
    first = q.fetch(timeout=3)
    assert first is not None
    first.release()  # hand-back with deliveries left: the same job again
    second = q.fetch(timeout=3)
    assert second is not None and second.attempt == 2 and second.last_attempt
    second.release()  # hand-back of the last delivery: a fresh copy, not a dead letter
    third = q.fetch(timeout=3)
    assert third is not None
    assert (third.data, third.headers, third.attempt) == ({"n": 1}, {"traceparent": "00-r-01"}, 1)
    third.ack()
    assert letters == []
    assert q.depth() == 0


def test_settling_twice_is_refused(make_queue: MakeQueue) -> None:
    q = make_queue(ack_wait_s=5)
    q.publish({"n": 1}, msg_id="m1")
    job = q.fetch(timeout=3)
    assert job is not None
    job.ack()
    with pytest.raises(Exception, match="already settled"):
        job.nak()


def test_duplicate_msg_id_is_one_job(make_queue: MakeQueue) -> None:
    q = make_queue(ack_wait_s=5)
    assert q.publish({"n": 1}, msg_id="same") is True
    assert q.publish({"n": 2}, msg_id="same") is False
    assert q.publish({"n": 3}, msg_id="other") is True
    got = []
    while (job := q.fetch(timeout=1)) is not None:
        got.append(job.data["n"])
        job.ack()
    assert got == [1, 3]


def test_two_consumers_never_hold_the_same_job(make_queue: MakeQueue) -> None:
    consumers = [make_queue(ack_wait_s=10), make_queue(ack_wait_s=10)]
    total = 16
    for i in range(total):
        consumers[0].publish({"i": i}, msg_id=f"m{i}")
    lock = threading.Lock()
    holding: set[int] = set()
    overlaps: list[int] = []
    done: list[tuple[str, int]] = []

    def work(name: str, q: WorkQueue) -> None:
        while True:
            job = q.fetch(timeout=1.5)
            if job is None:
                return
            i = job.data["i"]
            with lock:
                if i in holding:
                    overlaps.append(i)
                holding.add(i)
            time.sleep(0.05)
            with lock:
                holding.discard(i)
                done.append((name, i))
            job.ack()

    threads = [threading.Thread(target=work, args=(f"c{n}", q)) for n, q in enumerate(consumers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    assert sorted(i for _, i in done) == list(range(total))  # each exactly once
    assert {name for name, _ in done} == {"c0", "c1"}  # both took part


def test_jetstream_probe_reports_down_when_nats_dies() -> None:
    namespace = fresh_namespace()
    with NatsServer() as server:
        q = JetStreamQueue(server.url, namespace=namespace, ack_wait_s=2, timeout_s=1.0)
        try:
            assert q.probe().state == "ok"
            server.kill()
            deadline = time.monotonic() + 5
            state = q.probe()
            while state.state != "down" and time.monotonic() < deadline:
                time.sleep(0.1)
                state = q.probe()
            assert state.state == "down" and state.detail["error"]
        finally:
            q.close()


def test_jetstream_unreachable_server_fails_fast() -> None:
    from infra.queue import QueueUnavailable
    from support import free_port

    started = time.monotonic()
    with pytest.raises(QueueUnavailable):
        JetStreamQueue(f"nats://127.0.0.1:{free_port()}", namespace=fresh_namespace(), timeout_s=1.0)
    assert time.monotonic() - started < 5
