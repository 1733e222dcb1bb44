"""Token counting for prompt budgets and for usage the endpoint did not report.

tiktoken's ``o200k_base`` is used only when its encoding file already sits in tiktoken's
local cache: tiktoken downloads encodings on first use, which fails or hangs offline, so
this module never lets it reach the network. Otherwise a heuristic of about four
characters per token (one per CJK character) stands in. Either way a count is an
estimate for budgeting, not a bill.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog

from bot.messages import ChatTurn

logger = structlog.get_logger(__name__)

ENCODING_NAME = "o200k_base"
HEURISTIC_NAME = "heuristic"
TOKENS_PER_MESSAGE = 4
"""Tokens the chat format adds around every message (role and separators), as OpenAI's."""
REPLY_PRIMING_TOKENS = 3
"""Tokens that prime the assistant's reply at the end of every prompt."""

_ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
_ENCODING_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
_CHARS_PER_TOKEN = 4
# Caching long strings would pin a lot of memory for little gain: long texts are rare.
_CACHED_TEXT_MAX = 2048
# Scripts written without spaces, where one character is about one token.
_DENSE_CHARS = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3000-\u30ff\u3100-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff00-\uffef"
    "\U00020000-\U0003ffff]"
)

_UNLOADED: Any = object()
_encoding: Any = _UNLOADED
_encoding_lock = threading.Lock()


def tiktoken_cache_dir() -> Path | None:
    """Where tiktoken keeps downloaded encodings, or ``None`` when its cache is disabled.

    This mirrors ``tiktoken.load.read_file_cached``; the variables read here are
    tiktoken's own, not Zapa settings.
    """
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            value = os.environ[name]
            return Path(value) if value else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def encoding_cache_path() -> Path | None:
    """The file tiktoken caches ``o200k_base`` in, or ``None`` when its cache is disabled."""
    cache_dir = tiktoken_cache_dir()
    if cache_dir is None:
        return None
    return cache_dir / hashlib.sha1(_ENCODING_URL.encode()).hexdigest()  # noqa: S324 - tiktoken's key


def load_encoding() -> Any | None:
    """Load the tiktoken encoding from the local cache, never from the network.

    Returns:
        The ``tiktoken.Encoding``, or ``None`` when the file is not cached, is corrupt
        (tiktoken would then re-download it), or anything else goes wrong.
    """
    path = encoding_cache_path()
    try:
        if path is None or not path.is_file():
            return None
        if hashlib.sha256(path.read_bytes()).hexdigest() != _ENCODING_SHA256:
            logger.warning("tiktoken_cache_corrupt", path=str(path))
            return None
        import tiktoken

        return tiktoken.get_encoding(ENCODING_NAME)
    except Exception as exc:
        logger.warning("tiktoken_unavailable", error=repr(exc))
        return None


def _loaded_encoding() -> Any | None:
    global _encoding
    if _encoding is _UNLOADED:
        with _encoding_lock:
            if _encoding is _UNLOADED:
                _encoding = load_encoding()
                logger.info(
                    "token_counter_ready",
                    counter=ENCODING_NAME if _encoding is not None else HEURISTIC_NAME,
                )
    return _encoding


def encoding_name() -> str:
    """``"o200k_base"`` when tiktoken counts tokens, else ``"heuristic"``.

    The first call loads the encoding; call it at startup (in a thread) to keep that
    cost off the first request.
    """
    return ENCODING_NAME if _loaded_encoding() is not None else HEURISTIC_NAME


def estimate_tokens(text: str) -> int:
    """The heuristic count: one token per CJK character, one per four other characters.

    Never 0 for non-empty text.
    """
    if not text:
        return 0
    dense = len(_DENSE_CHARS.findall(text))
    return max(1, dense + math.ceil((len(text) - dense) / _CHARS_PER_TOKEN))


def _count(text: str) -> int:
    encoding = _loaded_encoding()
    if encoding is None:
        return estimate_tokens(text)
    # encode_ordinary: user text containing "<|endoftext|>" is plain text, not an error.
    return len(encoding.encode_ordinary(text))


_count_cached = lru_cache(maxsize=8192)(_count)


def count_tokens(text: str) -> int:
    """How many tokens ``text`` takes in a prompt (without per-message overhead)."""
    if len(text) > _CACHED_TEXT_MAX:
        return _count(text)
    return _count_cached(text)


def count_prompt(turns: Sequence[ChatTurn]) -> int:
    """How many prompt tokens these turns cost, with the chat format's overhead.

    Each message adds :data:`TOKENS_PER_MESSAGE`; the prompt adds
    :data:`REPLY_PRIMING_TOKENS` once, as OpenAI counts them.
    """
    if not turns:
        return 0
    return REPLY_PRIMING_TOKENS + sum(
        TOKENS_PER_MESSAGE + count_tokens(turn.content) for turn in turns
    )
