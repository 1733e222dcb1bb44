from __future__ import annotations

from html.parser import HTMLParser

import pytest

from adapters.telegram_format import split_html, to_telegram_html, visible_text

TELEGRAM_TAGS = {"b", "strong", "i", "em", "u", "s", "code", "pre", "a", "blockquote", "tg-spoiler"}


class _TagChecker(HTMLParser):
    """Records problems with a chunk's tags: unknown, unbalanced or left open."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in TELEGRAM_TAGS:
            self.problems.append(f"tag <{tag}> is not Telegram HTML")
        self.open.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1][0] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:]}")
            return
        self.open.pop()


def assert_balanced(chunk: str) -> None:
    checker = _TagChecker()
    checker.feed(chunk)
    checker.close()
    assert checker.problems == []
    assert checker.open == [], f"left open: {checker.open}"


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def rejoin_gaps(original: str, pieces: list[str]) -> list[str]:
    """Check the pieces are the original in order with only whitespace between them.

    Returns the whitespace dropped at each cut.
    """
    position = 0
    gaps = []
    for number, piece in enumerate(pieces):
        if number:
            start = position
            while position < len(original) and original[position].isspace():
                if original.startswith(piece, position):
                    break
                position += 1
            gaps.append(original[start:position])
        assert original.startswith(piece, position), f"piece {number} is not next in the text"
        position += len(piece)
    assert original[position:].strip() == ""
    return gaps


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("**bold** and __bold__", "<b>bold</b> and <b>bold</b>"),
        ("*italic* and _italic_", "<i>italic</i> and <i>italic</i>"),
        ("~~gone~~", "<s>gone</s>"),
        ("use `pip install`", "use <code>pip install</code>"),
        (
            "```python\nprint('hi')\n```",
            "<pre><code class=\"language-python\">print('hi')</code></pre>",
        ),
        ("```\nplain\n```", "<pre>plain</pre>"),
        ("    indented\n    code", "<pre>indented\ncode</pre>"),
        ("[docs](https://example.com/a)", '<a href="https://example.com/a">docs</a>'),
        ("<https://example.com>", '<a href="https://example.com">https://example.com</a>'),
        ("[write](mailto:me@example.com)", '<a href="mailto:me@example.com">write</a>'),
        ("> quoted **text**", "<blockquote>quoted <b>text</b></blockquote>"),
        ("> outer\n>\n> > inner", "<blockquote>outer\n\ninner</blockquote>"),
        ("- one\n- two", "• one\n• two"),
        ("3. three\n4. four", "3. three\n4. four"),
        ("- a\n  - b\n  - c\n- d", "• a\n  ◦ b\n  ◦ c\n• d"),
        ("1. a\n   - b\n\n     more b", "1. a\n   ◦ b\n     more b"),
        ("# Title", "<b>Title</b>"),
        ("## Title with **bold**", "<b>Title with bold</b>"),
        ("first\n\nsecond", "first\n\nsecond"),
        ("soft\nbreak", "soft\nbreak"),
        ("hard  \nbreak", "hard\nbreak"),
        ("above\n\n---\n\nbelow", "above\n\n——————\n\nbelow"),
    ],
)
def test_markdown_feature_renders_as_telegram_html(markdown: str, expected: str) -> None:
    rendered = to_telegram_html(markdown)

    assert rendered == expected
    assert_balanced(rendered)


def test_code_inside_a_list_keeps_its_own_indentation() -> None:
    markdown = "- step:\n\n  ```sh\n  cd x\n    y\n  ```\n- done"

    assert to_telegram_html(markdown) == (
        '• step:\n  <pre><code class="language-sh">cd x\n  y</code></pre>\n• done'
    )


def test_special_characters_are_escaped_in_text_and_in_code() -> None:
    markdown = "1 < 2 & 3 > 2 `a<b && c>d`\n\n```c\nif (a < b && c > d) {}\n```"

    rendered = to_telegram_html(markdown)

    assert rendered == (
        "1 &lt; 2 &amp; 3 &gt; 2 <code>a&lt;b &amp;&amp; c&gt;d</code>\n\n"
        '<pre><code class="language-c">if (a &lt; b &amp;&amp; c &gt; d) {}</code></pre>'
    )
    assert visible_text(rendered) == "1 < 2 & 3 > 2 a<b && c>d\n\nif (a < b && c > d) {}"


def test_raw_html_from_the_model_is_shown_not_obeyed() -> None:
    markdown = 'Hi <b onclick="x()">there</b>\n\n<script>\nalert(1)\n</script>'

    rendered = to_telegram_html(markdown)

    assert rendered == (
        'Hi &lt;b onclick="x()"&gt;there&lt;/b&gt;\n\n&lt;script&gt;\nalert(1)\n&lt;/script&gt;'
    )
    assert_balanced(rendered)


def test_javascript_link_is_not_a_link() -> None:
    rendered = to_telegram_html("[click](javascript:alert(1)) and [file](ftp://host/x)")

    assert "<a" not in rendered
    assert visible_text(rendered) == "[click](javascript:alert(1)) and file"


def test_link_address_is_attribute_escaped() -> None:
    rendered = to_telegram_html('[q](https://example.com/?a=1&b=2 "t") <https://x.org/?"y">')

    assert rendered == (
        '<a href="https://example.com/?a=1&amp;b=2">q</a> '
        '<a href="https://x.org/?%22y%22">https://x.org/?"y"</a>'
    )
    assert_balanced(rendered)


def test_language_that_is_not_a_word_is_dropped_from_the_code_class() -> None:
    rendered = to_telegram_html('```py" onclick="x\ncode\n```')

    assert rendered == "<pre>code</pre>"


def test_short_reply_is_one_unchanged_chunk() -> None:
    assert split_html("<b>hi</b> there") == ["<b>hi</b> there"]
    assert split_html("") == []
    assert split_html("  \n ") == []


def test_long_reply_splits_into_chunks_under_the_limit_that_join_back() -> None:
    paragraphs = [
        f"Paragraph {n} has **bold words** and `code` & <tags>. " + "Some sentence here. " * 20
        for n in range(25)
    ]
    markdown = "\n\n".join(paragraphs)
    rendered = to_telegram_html(markdown)
    assert len(visible_text(rendered)) > 10_000

    chunks = split_html(rendered)

    assert len(chunks) == 3
    for chunk in chunks:
        assert utf16_units(visible_text(chunk)) <= 4096
        assert_balanced(chunk)
    gaps = rejoin_gaps(visible_text(rendered), [visible_text(chunk) for chunk in chunks])
    assert gaps == ["\n\n", "\n\n"]


def test_long_code_block_stays_a_code_block_in_every_chunk() -> None:
    code = "\n".join(f"    total += values[{n}]  # add item {n} & move on" for n in range(300))
    rendered = to_telegram_html(f"Here:\n\n```python\ndef f():\n{code}\n```\n\nDone.")

    chunks = split_html(rendered)

    assert len(chunks) == 4
    for chunk in chunks:
        assert utf16_units(visible_text(chunk)) <= 4096
        assert_balanced(chunk)
    assert chunks[0].startswith('Here:\n\n<pre><code class="language-python">def f():\n')
    for chunk in chunks[1:3]:
        assert chunk.startswith('<pre><code class="language-python">    total += values[')
        assert chunk.endswith("</code></pre>")
    assert chunks[-1].endswith("</code></pre>\n\nDone.")
    gaps = rejoin_gaps(visible_text(rendered), [visible_text(chunk) for chunk in chunks])
    # Only the line break goes at a cut inside code; the next line keeps its indentation.
    assert gaps == ["\n", "\n", "\n"]


def test_open_tags_are_reopened_with_their_attributes() -> None:
    rendered = (
        '<a href="https://example.com/?a=1&amp;b=2"><b>' + " ".join(["word"] * 50) + "</b></a>"
    )

    chunks = split_html(rendered, limit=100)

    assert len(chunks) == 3
    for chunk in chunks:
        assert chunk.startswith('<a href="https://example.com/?a=1&amp;b=2"><b>word')
        assert chunk.endswith("word</b></a>")
        assert_balanced(chunk)


def test_emoji_count_as_two_units() -> None:
    chunks = split_html("😀" * 6, limit=10)

    assert chunks == ["😀" * 5, "😀"]


def test_astral_characters_fill_a_full_message_by_utf16_units() -> None:
    text = "\U0001d538" * 3000  # MATHEMATICAL DOUBLE-STRUCK CAPITAL A
    chunks = split_html(text)

    assert [len(chunk) for chunk in chunks] == [2048, 952]


def test_entities_count_as_one_character() -> None:
    chunks = split_html("&amp;" * 150, limit=100)

    assert chunks == ["&amp;" * 100, "&amp;" * 50]
    assert visible_text(chunks[0]) == "&" * 100


def test_split_prefers_the_paragraph_break_over_a_later_sentence_end() -> None:
    first = "First idea. It has two sentences and goes on a bit longer."
    second = "Second idea. It also ends late."
    chunks = split_html(f"{first}\n\n{second} More words after it.", limit=100)

    assert chunks[0] == first
    assert chunks[1] == f"{second} More words after it."


def test_split_prefers_a_sentence_end_over_a_later_space() -> None:
    text = "A sentence that ends past the middle here. Then words without a full stop"

    chunks = split_html(text, limit=60)

    assert chunks == [
        "A sentence that ends past the middle here.",
        "Then words without a full stop",
    ]


def test_boundary_early_in_the_room_gives_way_to_a_later_space() -> None:
    # A paragraph break near the start would leave a tiny message; use the room instead.
    text = "Hi.\n\nThen a long run of words without any full stop at all"

    chunks = split_html(text, limit=40)

    assert chunks == ["Hi.\n\nThen a long run of words without", "any full stop at all"]


def test_split_prefers_a_space_over_cutting_a_word() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta"

    chunks = split_html(text, limit=20)

    assert chunks == ["alpha beta gamma", "delta epsilon zeta", "eta theta"]


def test_word_longer_than_the_limit_is_cut_inside() -> None:
    chunks = split_html("<b>" + "a" * 250 + "</b>", limit=100)

    assert chunks == [
        "<b>" + "a" * 100 + "</b>",
        "<b>" + "a" * 100 + "</b>",
        "<b>" + "a" * 50 + "</b>",
    ]


def test_tags_at_a_paragraph_break_stay_with_their_text() -> None:
    rendered = "<b>" + "x" * 60 + "</b>\n\n<i>" + "y" * 60 + "</i>"

    chunks = split_html(rendered, limit=100)

    assert chunks == ["<b>" + "x" * 60 + "</b>", "<i>" + "y" * 60 + "</i>"]


def test_visible_text_removes_tags_and_decodes_entities() -> None:
    html_text = '<a href="https://e.org/?a&amp;b">A &amp; B &lt;3 &#128512; &bogus;</a>'

    assert visible_text(html_text) == "A & B <3 😀 &bogus;"


def test_a_limit_too_small_for_any_character_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        split_html("text", limit=1)


def test_hard_cut_keeps_an_accent_with_its_letter() -> None:
    text = "e\u0301" * 60  # "é" written as e + combining acute accent

    chunks = split_html(text, limit=25)

    assert [len(chunk) for chunk in chunks] == [24, 24, 24, 24, 24]
    assert all(not chunk.startswith("\u0301") for chunk in chunks)


def test_code_indentation_wider_than_the_limit_never_makes_a_blank_message() -> None:
    rendered = "<pre>line one\n" + " " * 30 + "deep</pre>"

    chunks = split_html(rendered, limit=10)

    assert chunks == ["<pre>line one</pre>", "<pre>deep</pre>"]
