"""``serve --workers N``: the connections uvicorn's shared listening socket accepts have Nagle off.

uvicorn binds that socket with protocol 0, so asyncio never set TCP_NODELAY on the accepted
connections, and every keep-alive request waited ~40 ms for the client's delayed ACK
(docs/benchmarks.md, "Production stack").
"""

from __future__ import annotations

import socket

import uvicorn

from infra.observability.process import _nodelay_listener


def test_multi_worker_listener_accepts_connections_with_nodelay() -> None:
    class Config(uvicorn.Config):  # a subclass, so the patch stays out of uvicorn.Config here
        pass

    _nodelay_listener(Config)
    _nodelay_listener(Config)  # idempotent: one wrapper, not two
    listener = Config("app:app", host="127.0.0.1", port=0).bind_socket()
    try:
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2], timeout=5):
            conn, _ = listener.accept()
            with conn:
                assert conn.proto == 0  # why asyncio's own TCP_NODELAY step skips it
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listener.close()
