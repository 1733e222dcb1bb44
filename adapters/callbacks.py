"""Outbound callbacks of the generic channel: refuse private targets, sign, retry.

Private addresses are refused twice: when the request names the URL (a 400 to the caller)
and again by the resolver each connection uses, so a name that later resolves to an
internal address (DNS rebinding) still cannot reach one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks.webhooks import Webhook
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

logger = structlog.get_logger(__name__)


class CallbackRefused(Exception):
    """The callback URL is not allowed (wrong scheme, or a private address)."""


class CallbackFailed(Exception):
    """The callback endpoint did not take the reply."""


class _Retryable(CallbackFailed):
    """A failure worth another attempt: network error, timeout, 429 or 5xx."""


def is_public(address: str) -> bool:
    """Whether an IP address is publicly routable (not loopback, private, link-local…)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, dropping every non-public address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host``; raise :class:`CallbackRefused` when only private addresses remain."""
        results = [r for r in await self._inner.resolve(host, port, family) if is_public(r["host"])]
        if not results:
            raise CallbackRefused(f"{host} resolves to no public address")
        return results

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()


async def check_callback_url(url: str, *, allow_private: bool) -> None:
    """Refuse URLs that are not http(s) or that point at a non-public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback_url must be an http or https URL")
    if allow_private:
        return
    try:
        await PublicOnlyResolver().resolve(parts.hostname, parts.port or 0, socket.AF_UNSPEC)
    except CallbackRefused:
        raise
    except OSError as exc:
        raise CallbackRefused(f"cannot resolve {parts.hostname}: {exc}") from None


class CallbackPoster:
    """POSTs results to callback URLs, signed with Standard Webhooks headers when configured."""

    def __init__(
        self,
        *,
        secret: str | None,
        allow_private: bool,
        attempts: int = 6,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float = 15.0,
    ) -> None:
        self._signer = Webhook(secret) if secret else None
        self._allow_private = allow_private
        self._attempts = attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = None if self._allow_private else PublicOnlyResolver()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=100),
                timeout=self._timeout,
            )
        return self._session

    async def post(self, url: str, delivery_id: str, body: dict[str, Any]) -> None:
        """Deliver ``body`` to ``url``, retrying with backoff on network errors, 429 and 5xx.

        ``delivery_id`` is the ``webhook-id`` of every attempt, so the receiver can drop
        repeats.

        Raises:
            CallbackFailed: the endpoint refused it, or every attempt failed.
        """
        payload = orjson.dumps(body)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff_initial, max=self._backoff_max)
            + wait_random(0, self._backoff_initial),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._post_once(url, delivery_id, payload)

    async def _post_once(self, url: str, delivery_id: str, payload: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "Zapa"}
        if self._signer is not None:
            now = datetime.now(tz=UTC)
            headers["webhook-id"] = delivery_id
            headers["webhook-timestamp"] = str(int(now.timestamp()))
            headers["webhook-signature"] = self._signer.sign(delivery_id, now, payload.decode())
        try:
            async with self._client().post(url, data=payload, headers=headers) as response:
                status = response.status
        except CallbackRefused as exc:
            raise CallbackFailed(str(exc)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("callback_attempt_failed", error=repr(exc))
            raise _Retryable(repr(exc)) from exc
        if status == 429 or status >= 500:
            logger.warning("callback_attempt_failed", status=status)
            raise _Retryable(f"callback answered {status}")
        if status >= 300:
            raise CallbackFailed(f"callback answered {status}")

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)
