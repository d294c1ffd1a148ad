"""The dev stack's Redis: TLS only on loopback, verified against the dev CA, password required."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import redis

from pacs_devstack import redis as redis_service
from pacs_devstack.service import StackContext

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def info(stack: dict[str, Any]) -> dict[str, Any]:
    if "redis" not in stack:
        pytest.skip("redis is not part of this dev stack run")
    return dict(stack["redis"])


def test_tls_with_password_works(stack: dict[str, Any], info: dict[str, Any]) -> None:
    conn = redis_service.SERVICE.client(StackContext(ca_file=Path(stack["ca"]["file"])))
    try:
        assert conn.ping() is True
    finally:
        conn.close()


def test_plain_tcp_gets_no_redis_answer(info: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", info["port"]), timeout=3) as s:
        s.sendall(b"PING\r\n")
        try:
            data = s.recv(64)
        except (ConnectionResetError, TimeoutError):
            data = b""
    assert b"PONG" not in data and not data.startswith(b"-NOAUTH")


def test_without_password_is_refused(stack: dict[str, Any], info: dict[str, Any]) -> None:
    conn = redis.Redis(host="127.0.0.1", port=info["port"], ssl=True, ssl_ca_certs=stack["ca"]["file"],
                       socket_timeout=3)
    with pytest.raises(redis.exceptions.AuthenticationError):
        conn.ping()
    conn.close()


def test_wrong_password_is_refused(stack: dict[str, Any], info: dict[str, Any]) -> None:
    conn = redis.Redis(host="127.0.0.1", port=info["port"], password="not-the-password", ssl=True,
                       ssl_ca_certs=stack["ca"]["file"], socket_timeout=3)
    with pytest.raises(redis.exceptions.AuthenticationError):
        conn.ping()
    conn.close()


def test_an_unknown_ca_is_refused(info: dict[str, Any]) -> None:
    conn = redis.Redis(host="127.0.0.1", port=info["port"], ssl=True, socket_timeout=3)  # system CAs only
    with pytest.raises(redis.exceptions.ConnectionError):
        conn.ping()
    conn.close()
