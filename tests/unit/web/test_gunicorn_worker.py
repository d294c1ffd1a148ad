"""bridge/web/gunicorn_worker.py's held header block, on a recording socket (the worker under a real
gunicorn: tests/integration/web/test_gunicorn_worker.py)."""

from __future__ import annotations

from bridge.web.gunicorn_worker import _HeldHeaders

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def fileno(self) -> int:
        return 42


def test_the_header_block_leaves_with_the_first_body_bytes() -> None:
    sock = Recorder()
    held = _HeldHeaders(sock)
    held.sendall(HEAD)
    assert sock.writes == []
    held.sendall(b"{}")
    held.sendall(b"more")
    held.flush()
    assert sock.writes == [HEAD + b"{}", b"more"]


def test_a_response_without_body_is_flushed_whole() -> None:
    sock = Recorder()
    held = _HeldHeaders(sock)
    held.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    held.flush()
    held.flush()
    assert sock.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]


def test_a_large_first_chunk_is_not_copied_behind_the_headers() -> None:
    sock = Recorder()
    held = _HeldHeaders(sock)
    held.sendall(HEAD)
    big = b"x" * (1 << 20)
    held.sendall(big)
    assert sock.writes == [HEAD, big]


def test_only_the_first_write_is_ever_held_and_order_is_kept() -> None:
    """A body chunk that looks like a header block is body: sent at once, in order."""
    sock = Recorder()
    held = _HeldHeaders(sock)
    held.sendall(b"not a header")
    held.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    assert sock.writes == [b"not a header", b"HTTP/1.1 200 OK\r\n\r\n"]
    assert held.fileno() == 42  # everything else is the real socket's
