from __future__ import annotations

import pytest

from adapters.slack_format import SLACK_TEXT_LIMIT, from_mrkdwn, split_mrkdwn, to_mrkdwn

ZWSP = "\u200b"


def non_whitespace(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("***both***", "_*both*_"),
        ("**bold with *italic* inside**", "*bold with _italic_ inside*"),
        ("*italic with _italic_ inside*", "_italic with italic inside_"),
        ("use `pip install`", "use `pip install`"),
        ("`**not bold**`", "`**not bold**`"),
        ("```python\nprint('hi')\n```", "```\nprint('hi')\n```"),
        ("```\nplain\n  indented\n```", "```\nplain\n  indented\n```"),
        ("    indented\n    code", "```\nindented\ncode\n```"),
        ("[docs](https://example.com/a)", "<https://example.com/a|docs>"),
        ("[plain](http://example.com)", "<http://example.com|plain>"),
        ("[write](mailto:me@example.com)", "<mailto:me@example.com|write>"),
        ("[**bold** `label`](https://example.com)", "<https://example.com|bold label>"),
        ("<https://example.com>", "<https://example.com>"),
        ("<me@example.com>", "<mailto:me@example.com|me@example.com>"),
        ("see https://example.com/a.", "see <https://example.com/a>."),
        ("(https://example.org/Foo_(bar))", "(<https://example.org/Foo_(bar)>)"),
        ("![a cat](https://example.com/cat.png)", "<https://example.com/cat.png|a cat>"),
        ("![](https://example.com/cat.png)", "<https://example.com/cat.png>"),
        ("**[docs](https://example.com)**", "*<https://example.com|docs>*"),
        ("# Title", "*Title*"),
        ("## Title with **bold** and _italic_", "*Title with bold and _italic_*"),
        ("> quoted **text**", "> quoted *text*"),
        ("> one\n> two", "> one\n> two"),
        ("> outer\n>\n> > inner", "> outer\n>\n> inner"),
        ("- one\n- two", "• one\n• two"),
        ("* one\n\n* two", "• one\n• two"),
        ("- a\n  - b\n  - c\n- d", "• a\n  ◦ b\n  ◦ c\n• d"),
        ("- a\n  - b\n    - c", "• a\n  ◦ b\n    ◦ c"),
        ("1. one\n2. two", "1. one\n2. two"),
        ("3. three\n4. four", "3. three\n4. four"),
        ("1. a\n   - b\n\n     more b", "1. a\n   ◦ b\n     more b"),
        ("> - quoted item\n> - another", "> • quoted item\n> • another"),
        ("first\n\nsecond", "first\n\nsecond"),
        ("soft\nbreak", "soft\nbreak"),
        ("hard  \nbreak", "hard\nbreak"),
        ("above\n\n---\n\nbelow", "above\n\n———\n\nbelow"),
    ],
)
def test_markdown_feature_renders_as_mrkdwn(markdown: str, expected: str) -> None:
    assert to_mrkdwn(markdown) == expected


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("foo**bar**baz", f"foo{ZWSP}*bar*{ZWSP}baz"),
        ("un*believ*able", f"un{ZWSP}_believ_{ZWSP}able"),
        ("x~~y~~", f"x{ZWSP}~y~"),
        ("*italic*s", f"_italic_{ZWSP}s"),
        ("(**bold**), **bold**!", "(*bold*), *bold*!"),
        ("**a** **b**", "*a* *b*"),
    ],
)
def test_markers_touching_a_word_get_a_zero_width_space_outside(
    markdown: str, expected: str
) -> None:
    assert to_mrkdwn(markdown) == expected


def test_code_inside_a_list_keeps_its_own_indentation() -> None:
    markdown = "- step:\n\n  ```sh\n  cd x\n    y\n  ```\n- done"

    assert to_mrkdwn(markdown) == "• step:\n  ```\ncd x\n  y\n```\n• done"


def test_special_characters_are_escaped_in_text_and_in_code() -> None:
    markdown = "1 < 2 & 3 > 2 `a<b && c>d`\n\n```c\nif (a < b && c > d) {}\n```"

    assert to_mrkdwn(markdown) == (
        "1 &lt; 2 &amp; 3 &gt; 2 `a&lt;b &amp;&amp; c&gt;d`\n\n"
        "```\nif (a &lt; b &amp;&amp; c &gt; d) {}\n```"
    )


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("Hey <!channel> look", "Hey &lt;!channel&gt; look"),
        ("<!here|here> and <!everyone>", "&lt;!here|here&gt; and &lt;!everyone&gt;"),
        ("ask <@U123> or <#C456>", "ask &lt;@U123&gt; or &lt;#C456&gt;"),
        ("`<!channel>`", "`&lt;!channel&gt;`"),
        ('Hi <b onclick="x()">there</b>', 'Hi &lt;b onclick="x()"&gt;there&lt;/b&gt;'),
        ("<script>\nalert(1)\n</script>", "&lt;script&gt;\nalert(1)\n&lt;/script&gt;"),
        ("AT&amp;T &lt;3", "AT&amp;T &lt;3"),
    ],
)
def test_mentions_and_html_from_the_model_show_literally(markdown: str, expected: str) -> None:
    rendered = to_mrkdwn(markdown)

    assert rendered == expected
    assert "<" not in rendered
    assert ">" not in rendered


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("[file](ftp://host/x)", "file"),
        ("[**run** it](ssh://host)", "*run* it"),
        ("[click](javascript:alert(1))", "[click](javascript:alert(1))"),
        ("![img](data:image/png;base64,AAAA)", "img"),
        ("[x](tel:123)", "x"),
    ],
)
def test_link_with_another_scheme_is_just_its_text(markdown: str, expected: str) -> None:
    assert to_mrkdwn(markdown) == expected


def test_bar_and_brackets_in_a_link_label_do_not_break_the_link() -> None:
    rendered = to_mrkdwn("[a | b > c < d & e](https://example.com/?q=1&r=2)")

    assert rendered == "<https://example.com/?q=1&amp;r=2|a \u2223 b &gt; c &lt; d &amp; e>"


def test_bar_and_brackets_in_a_link_address_are_percent_encoded() -> None:
    rendered = to_mrkdwn("[x](https://example.com/a|b>c) <https://example.com/p|q>")

    assert rendered == "<https://example.com/a%7Cb%3Ec|x> <https://example.com/p%7Cq>"


def test_label_that_repeats_the_address_is_left_out() -> None:
    rendered = to_mrkdwn("[https://example.com](https://example.com) <https://example.com/é>")

    assert rendered == "<https://example.com> <https://example.com/%C3%A9>"


def test_backtick_inside_inline_code_cannot_close_it_early() -> None:
    assert to_mrkdwn("``a`b``") == "`a\u02cbb`"


def test_literal_triple_backticks_do_not_open_a_code_block() -> None:
    rendered = to_mrkdwn("type ``` to start\n\n````\ninner ```\n````")

    assert rendered == f"type `{ZWSP}`` to start\n\n```\ninner `{ZWSP}``\n```"
    assert rendered.count("```") == 2


def test_empty_input_renders_as_nothing() -> None:
    assert to_mrkdwn("") == ""
    assert to_mrkdwn("```\n```") == ""


def test_short_reply_is_one_unchanged_chunk() -> None:
    assert split_mrkdwn("*hi* there") == ["*hi* there"]
    assert split_mrkdwn("*hi* there\n\n  ") == ["*hi* there"]
    assert split_mrkdwn("x" * SLACK_TEXT_LIMIT) == ["x" * SLACK_TEXT_LIMIT]


@pytest.mark.parametrize("blank", ["", "  \n ", "\n\n"])
def test_blank_reply_has_no_chunks(blank: str) -> None:
    assert split_mrkdwn(blank) == []


def test_long_reply_splits_at_paragraphs_into_chunks_under_the_limit() -> None:
    paragraphs = [
        f"Paragraph {n} has **bold words**, `code` & <tags>. " + "Some sentence here. " * 20
        for n in range(45)
    ]
    rendered = to_mrkdwn("\n\n".join(paragraphs))
    assert len(rendered) > 20_000

    chunks = split_mrkdwn(rendered)

    assert len(chunks) == 6
    assert all(len(chunk) <= SLACK_TEXT_LIMIT for chunk in chunks)
    assert all(chunk.startswith("Paragraph ") for chunk in chunks)
    assert all(chunk.endswith("Some sentence here.") for chunk in chunks)
    assert "\n\n".join(chunks) == rendered


def test_twenty_thousand_characters_without_any_break_still_fit() -> None:
    text = "word" * 5_000

    chunks = split_mrkdwn(text)

    assert [len(chunk) for chunk in chunks] == [3900] * 5 + [500]
    assert "".join(chunks) == text


def test_long_code_block_is_reopened_in_every_chunk() -> None:
    code = "\n".join(f"    total += values[{n}]  # add item {n} & move on" for n in range(300))
    rendered = to_mrkdwn(f"Here:\n\n```python\ndef f():\n{code}\n```\n\nDone.")

    chunks = split_mrkdwn(rendered)

    assert len(chunks) == 5
    assert all(len(chunk) <= SLACK_TEXT_LIMIT for chunk in chunks)
    assert chunks[0].startswith("Here:\n\n```\ndef f():\n    total += values[0]")
    for chunk in chunks[1:]:
        # Only the line break goes at a cut inside code; the next line keeps its indentation.
        assert chunk.startswith("```\n    total += values[")
    for chunk in chunks[:-1]:
        assert chunk.endswith(" &amp; move on\n```")
    assert chunks[-1].endswith("# add item 299 &amp; move on\n```\n\nDone.")
    # Each chunk is one whole code block (or part of one), and no other text is lost.
    assert all(chunk.count("```") == 2 for chunk in chunks)
    without_fences = non_whitespace("".join(chunks).replace("```", ""))
    assert without_fences == non_whitespace(rendered.replace("```", ""))


def test_closing_and_reopening_fences_count_toward_the_limit() -> None:
    text = "```\n" + "\n".join(f"line {n:02}" for n in range(10)) + "\n```"

    chunks = split_mrkdwn(text, limit=31)

    assert chunks == [
        "```\nline 00\nline 01\nline 02\n```",
        "```\nline 03\nline 04\nline 05\n```",
        "```\nline 06\nline 07\nline 08\n```",
        "```\nline 09\n```",
    ]
    assert [len(chunk) for chunk in chunks] == [31, 31, 31, 15]


def test_cut_before_a_closing_fence_does_not_leave_an_empty_code_block() -> None:
    text = "```\n" + "abc\n" * 5 + "```\n\nDone here."

    chunks = split_mrkdwn(text, limit=30)

    assert chunks == ["```\nabc\nabc\nabc\nabc\nabc\n```", "Done here."]


def test_closing_fence_right_after_a_cut_is_not_reopened() -> None:
    # Cutting before the closing fence: the added one stands in for it in the first chunk.
    chunks = split_mrkdwn("```\nline one\n```and then more words here", limit=20)

    assert chunks == ["```\nline one\n```", "and then more words", "here"]


def test_chunk_never_ends_on_an_opening_fence() -> None:
    chunks = split_mrkdwn("Some words then ```\nlong code line here\n```", limit=25)

    assert chunks == ["Some words then", "```\nlong code line\n```", "```\nhere\n```"]


def test_quote_line_cut_mid_way_goes_on_quoted() -> None:
    text = "> " + " ".join(["word"] * 20) + "\nafter"

    chunks = split_mrkdwn(text, limit=40)

    assert chunks == [
        "> word word word word word word word",
        "> word word word word word word word",
        "> word word word word word word\nafter",
    ]


def test_quote_cut_at_a_line_break_adds_no_marker() -> None:
    text = "> first quoted line here\n> second quoted line here"

    assert split_mrkdwn(text, limit=40) == ["> first quoted line here", "> second quoted line here"]


def test_split_prefers_the_paragraph_break_over_a_later_sentence_end() -> None:
    first = "First idea. It has two sentences and goes on a bit longer."
    second = "Second idea. It also ends late."
    chunks = split_mrkdwn(f"{first}\n\n{second} More words after it.", limit=100)

    assert chunks == [first, f"{second} More words after it."]


def test_split_prefers_a_line_break_over_a_later_sentence_end() -> None:
    text = "A line that runs past the middle of the room\nThen more. And words after it"

    assert split_mrkdwn(text, limit=60) == [
        "A line that runs past the middle of the room",
        "Then more. And words after it",
    ]


def test_split_prefers_a_sentence_end_over_a_later_space() -> None:
    text = "A sentence that ends past the middle here. Then words without a full stop"

    assert split_mrkdwn(text, limit=60) == [
        "A sentence that ends past the middle here.",
        "Then words without a full stop",
    ]


def test_boundary_early_in_the_room_gives_way_to_a_later_space() -> None:
    # A paragraph break near the start would leave a tiny message; use the room instead.
    text = "Hi.\n\nThen a long run of words without any full stop at all"

    assert split_mrkdwn(text, limit=40) == [
        "Hi.\n\nThen a long run of words without",
        "any full stop at all",
    ]


def test_split_prefers_a_space_over_cutting_a_word() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta"

    assert split_mrkdwn(text, limit=20) == ["alpha beta gamma", "delta epsilon zeta", "eta theta"]


def test_word_longer_than_the_limit_is_cut_inside() -> None:
    assert split_mrkdwn("a" * 250, limit=100) == ["a" * 100, "a" * 100, "a" * 50]


def test_hard_cut_keeps_an_accent_with_its_letter() -> None:
    text = "e\u0301" * 60  # "é" written as e + combining acute accent

    chunks = split_mrkdwn(text, limit=25)

    assert [len(chunk) for chunk in chunks] == [24, 24, 24, 24, 24]
    assert all(not chunk.startswith("\u0301") for chunk in chunks)


def test_hard_cut_keeps_a_joined_emoji_whole() -> None:
    technologist = "\U0001f469\u200d\U0001f4bb"  # woman + zero-width joiner + laptop

    chunks = split_mrkdwn(technologist * 10, limit=14)

    assert chunks == [technologist * 4, technologist * 4, technologist * 2]


def test_escapes_are_never_cut_apart() -> None:
    chunks = split_mrkdwn("&amp;" * 30, limit=22)

    assert chunks == ["&amp;" * 4] * 7 + ["&amp;" * 2]


def test_link_label_spaces_are_not_cut_points() -> None:
    text = "see <https://example.com/a|the docs page> now please"

    chunks = split_mrkdwn(text, limit=45)

    assert chunks == ["see <https://example.com/a|the docs page> now", "please"]


def test_code_indentation_wider_than_the_limit_never_makes_a_blank_message() -> None:
    text = "```\nline one\n" + " " * 30 + "deep\n```"

    chunks = split_mrkdwn(text, limit=20)

    assert chunks == ["```\nline one\n```", "```\ndeep\n```"]


@pytest.mark.parametrize("limit", [13, 17, 40, 101])
def test_rendered_reply_splits_within_any_limit_without_losing_text(limit: int) -> None:
    markdown = (
        "# Plan\n\nFirst, **check** the `config` & <env>. See [docs](https://example.com/x).\n\n"
        "> Quoted advice that is long enough to need a cut somewhere inside it.\n\n"
        "- one item\n- two items\n  - nested item\n\n"
        "```py\nfor x in range(3):\n    print(x)\n```\n\nDone!"
    )
    rendered = to_mrkdwn(markdown)

    chunks = split_mrkdwn(rendered, limit=limit)

    assert all(0 < len(chunk) <= limit for chunk in chunks)
    assert all(chunk.count("```") % 2 == 0 for chunk in chunks)
    joined = "".join(chunks)
    assert non_whitespace(joined.replace("```", "").replace(">", "")) == non_whitespace(
        rendered.replace("```", "").replace(">", "")
    )


@pytest.mark.parametrize("limit", [0, 12])
def test_a_limit_too_small_to_make_progress_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 13"):
        split_mrkdwn("some text", limit=limit)


@pytest.mark.parametrize(
    ("delivered", "typed"),
    [
        ("<@U0BOT> what is 2 &lt; 3 &amp;&amp; 4 &gt; 1?", "what is 2 < 3 && 4 > 1?"),
        ("ask <@U0BOB|bob> and <@W0CAROL>", "ask @bob and @W0CAROL"),
        ("post in <#C0GEN|general> or <#C0RND>", "post in #general or #C0RND"),
        ("<!here> and <!channel>, <!subteam^S0DEV|@devs>", "@here and @channel, @devs"),
        ("see <https://example.com/a?b=1&amp;c=2>", "see https://example.com/a?b=1&c=2"),
        ("read <https://example.com|the docs>", "read the docs (https://example.com)"),
        ("mail <mailto:ann@example.com|ann@example.com>", "mail ann@example.com"),
        ("  <@U0BOT>  ", ""),
    ],
)
def test_from_mrkdwn_gives_back_what_the_person_typed(delivered: str, typed: str) -> None:
    assert from_mrkdwn(delivered, bot_user_id="U0BOT") == typed
