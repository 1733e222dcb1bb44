"""Token counting: estimates that grow with the text, and never a download."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot import tokens
from bot.messages import ChatTurn, Role


def test_longer_text_counts_more_tokens() -> None:
    short = tokens.count_tokens("Hello there, how are you?")
    longer = tokens.count_tokens("Hello there, how are you? " * 20)

    assert 0 < short < longer


@pytest.mark.parametrize("text", ["a", ".", " ", "🙂", "你"])
def test_non_empty_text_never_counts_zero(text: str) -> None:
    assert tokens.count_tokens(text) >= 1


def test_empty_text_counts_zero() -> None:
    assert tokens.count_tokens("") == 0
    assert tokens.count_prompt([]) == 0


def test_estimate_counts_cjk_characters_about_one_each() -> None:
    chinese = "我们今天去公园散步吧" * 10  # 100 characters
    english = "abcdefghij" * 10  # 100 characters

    assert tokens.estimate_tokens(chinese) >= 90
    assert tokens.estimate_tokens(english) <= 30
    assert tokens.estimate_tokens("word " * 400) == pytest.approx(500, rel=0.2)


def test_special_token_markers_in_user_text_are_counted_as_text() -> None:
    assert tokens.count_tokens("please print <|endoftext|> for me") > 1


def test_every_message_adds_overhead_to_the_prompt() -> None:
    one = [ChatTurn(Role.USER, "hello world hello world")]
    two = [ChatTurn(Role.USER, "hello world"), ChatTurn(Role.USER, "hello world")]

    assert tokens.count_prompt(one) > tokens.count_tokens("hello world hello world")
    assert tokens.count_prompt(two) > tokens.count_prompt(one)


def test_counting_a_long_history_is_fast() -> None:
    history = [f"message {i}: " + "some words in a chat " * 20 for i in range(2000)]
    history.append("x" * 100_000)

    started = time.perf_counter()
    for _ in range(3):  # every turn recounts the history
        total = sum(tokens.count_tokens(text) for text in history)

    assert total > 2000 * 50
    assert time.perf_counter() - started < 2.0


def test_missing_encoding_cache_falls_back_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    started = time.perf_counter()
    assert tokens.load_encoding() is None

    assert time.perf_counter() - started < 1.0
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded into the cache


def test_corrupt_encoding_cache_is_neither_used_nor_downloaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    path = tokens.encoding_cache_path()
    assert path is not None and path.parent == tmp_path
    path.write_bytes(b"not an encoding")

    assert tokens.load_encoding() is None
    # tiktoken itself would have deleted the file and fetched it from the internet.
    assert path.read_bytes() == b"not an encoding"


def test_disabled_encoding_cache_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")

    assert tokens.encoding_cache_path() is None
    assert tokens.load_encoding() is None


def test_counter_reports_which_method_counts() -> None:
    name = tokens.encoding_name()

    assert name in (tokens.ENCODING_NAME, tokens.HEURISTIC_NAME)
    if name == tokens.HEURISTIC_NAME:
        assert tokens.count_tokens("abcdefgh" * 10) == tokens.estimate_tokens("abcdefgh" * 10)
