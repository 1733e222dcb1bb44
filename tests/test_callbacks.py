"""Callback delivery: private targets refused at connect time, 4xx final, failures retried."""

from __future__ import annotations

import socket

import pytest

from adapters.callbacks import (
    CallbackFailed,
    CallbackPoster,
    CallbackRefused,
    check_callback_url,
    is_public,
)
from tests.harness import Receiver


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.0.0.7", False),
        ("172.16.3.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
    ],
)
def test_only_public_addresses_count_as_public(address: str, public: bool) -> None:
    assert is_public(address) is public


async def test_callback_url_checks() -> None:
    await check_callback_url("http://127.0.0.1/x", allow_private=True)
    with pytest.raises(CallbackRefused):
        await check_callback_url("http://127.0.0.1/x", allow_private=False)
    with pytest.raises(CallbackRefused):
        await check_callback_url("file:///etc/passwd", allow_private=True)
    with pytest.raises(CallbackRefused):
        await check_callback_url("http://no-such-host.invalid/x", allow_private=False)


async def test_private_target_is_refused_when_connecting_too() -> None:
    # The URL passed the check once (say, DNS changed since): the connection is still refused.
    async with Receiver() as receiver:
        poster = CallbackPoster(secret=None, allow_private=False, attempts=2, backoff_initial=0.01)
        try:
            with pytest.raises(CallbackFailed):
                await poster.post(receiver.url.replace("127.0.0.1", "localhost"), "msg_1", {"a": 1})
        finally:
            await poster.aclose()
        assert receiver.received == []


async def test_client_error_answer_is_final() -> None:
    async with Receiver(statuses=[400, 200]) as receiver:
        poster = CallbackPoster(secret=None, allow_private=True, attempts=3, backoff_initial=0.01)
        try:
            with pytest.raises(CallbackFailed, match="400"):
                await poster.post(receiver.url, "msg_1", {"a": 1})
        finally:
            await poster.aclose()
        assert receiver.statuses == [200]  # no second attempt


async def test_unreachable_endpoint_is_retried_then_fails() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    poster = CallbackPoster(
        secret=None, allow_private=True, attempts=3, backoff_initial=0.01, backoff_max=0.02
    )
    try:
        with pytest.raises(CallbackFailed):
            await poster.post(f"http://127.0.0.1:{port}/hook", "msg_1", {"a": 1})
    finally:
        await poster.aclose()
