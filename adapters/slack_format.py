"""Model Markdown as Slack mrkdwn, cut into messages Slack shows whole.

Slack's mrkdwn is not Markdown: bold is ``*one star*``, links are ``<url|text>``, there are no
headings or lists, and only ``&``, ``<`` and ``>`` are escaped. :func:`to_mrkdwn` renders
Markdown with markdown-it-py into that dialect (lists and headings become plain text), and
:func:`split_mrkdwn` cuts the result into messages of at most :data:`SLACK_TEXT_LIMIT`
characters, each of which renders on its own.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

__all__ = ["SLACK_TEXT_LIMIT", "from_mrkdwn", "split_mrkdwn", "to_mrkdwn"]

SLACK_TEXT_LIMIT = 3900
"""Most characters (not bytes) :func:`split_mrkdwn` puts in one message.

Slack truncates a message's ``text`` beyond 40,000 characters and recommends keeping it under
4,000, as longer messages are cut in display behind "show more"; this stays under 4,000 with a
margin.
"""

# Raw HTML from the model must reach the user as text, never as markup.
_PARSER = MarkdownIt("commonmark", {"html": False}).enable("strikethrough")
_LINK_SCHEMES = ("http:", "https:", "mailto:")
_HORIZONTAL_RULE = "———"
_BULLETS = ("•", "◦")
_MARKERS = {"strong": "*", "em": "_", "s": "~"}
_FENCE = "```"
_ZWSP = "\u200b"
# Slack has no escape for "|", which ends a link's address; a look-alike keeps the label whole.
_LINK_LABEL_BAR = "\u2223"
# Slack has no escape for "`" either; inside inline code a look-alike keeps the span closed.
_CODE_BACKTICK = "\u02cb"
_TRIPLE_BACKTICK = re.compile(r"`(?=``)")
_WORD = re.compile(r"\w")
_BARE_URL = re.compile(r"https?://\w[^\s<>]*")
_URL_TRAILERS = frozenset(".,:;!?'\"")

# A chunk may neither end inside one of these nor split it across two messages.
_ATOM = re.compile(r"<[^<>\s|]+(?:\|[^<>\n]*)?>|&(?:amp|lt|gt);")
_SENTENCE_END = frozenset(".!?…")
_SENTENCE_CLOSERS = frozenset("\"')]»\u201d\u2019")
# A hard cut before one of these would tear a character apart (accents, emoji sequences).
_JOINERS = frozenset("\u200d\ufe0e\ufe0f")
_REOPEN = _FENCE + "\n"
_CLOSE = "\n" + _FENCE
_QUOTE = "> "
# The worst chunk reopens and closes a code block (8 characters) around one escaped "&amp;".
_MIN_LIMIT = len(_REOPEN) + len(_CLOSE) + len("&amp;")


# What Slack puts in a message's text for mentions, channels, broadcasts and links.
_SPECIAL = re.compile(r"<(?P<target>[^<>|\s]+)(?:\|(?P<label>[^<>]*))?>")
_BROADCASTS = {"here", "channel", "everyone"}


def from_mrkdwn(text: str, *, bot_user_id: str | None = None) -> str:
    """The text a person typed, from the mrkdwn Slack delivers it as.

    The bot's own mention is dropped (it only addresses the message); other people and
    channels become ``@name``/``#name``, broadcasts ``@here``, links their address (with the
    label in front when it differs), and ``&amp;``, ``&lt;``, ``&gt;`` their characters.

    Args:
        text: an event's or a command's ``text``.
        bot_user_id: the bot's user id, whose mentions are removed.

    Returns:
        Plain text for the model, stripped of surrounding whitespace.
    """

    def plain(match: re.Match[str]) -> str:
        target, label = match["target"], match["label"]
        sigil, rest = target[0], target[1:]
        if sigil == "@":
            return "" if rest == bot_user_id else f"@{label or rest}"
        if sigil == "#":
            return f"#{label or rest}"
        if sigil == "!":
            name = rest.split("^", 1)[0]
            return f"@{name}" if name in _BROADCASTS else (label or f"@{name}")
        address = target.removeprefix("mailto:")
        return address if not label or label == address else f"{label} ({address})"

    unlinked = _SPECIAL.sub(plain, text)
    return unlinked.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def to_mrkdwn(markdown: str) -> str:
    """Render Markdown written by a model as Slack mrkdwn.

    Bold, italic, strikethrough, code, code blocks, links and block quotes become their mrkdwn
    forms; headings become a bold line and lists plain "• item" / "1. item" lines. All text has
    ``&``, ``<`` and ``>`` escaped, so raw HTML or ``<!channel>`` typed by the model shows
    literally and pings no one.

    Slack has no escapes beyond those three, so some characters are stood in for: a "|" in a
    link's label becomes the look-alike U+2223 (Slack would end the address there), a "`" in
    inline code becomes U+02CB, and a literal "```" gets a zero-width space (U+200B) between
    its backticks, which would otherwise open a code block. Slack formats only at word
    boundaries, so where a word character touches a bold, italic or strike marker, a
    zero-width space goes outside the marker (``foo**bar**`` gets one before the first ``*``).

    Args:
        markdown: CommonMark text, with ``~~strikethrough~~``.

    Returns:
        mrkdwn for a message's ``text``; not necessarily short enough, see
        :func:`split_mrkdwn`.
    """
    root = SyntaxTreeNode(_PARSER.parse(markdown))
    return _blocks(root.children, quoted=False, list_depth=0)


def split_mrkdwn(text: str, limit: int = SLACK_TEXT_LIMIT) -> list[str]:
    """Cut mrkdwn into chunks of at most ``limit`` characters that render on their own.

    Cuts fall, in order of preference, at a blank line, a line break, a sentence end, a space,
    and only when a stretch has none of these, inside a word (never inside an escape, a link,
    or a character made of several code points, unless one alone exceeds the room); a
    preferred boundary must leave the chunk at least half full, else the last boundary of any
    kind is used. The whitespace at a cut is
    dropped, except the indentation of a code line. A code block open at a cut is closed at
    the end of the chunk and reopened at the start of the next, these fences counting toward
    the limit; a quoted line cut mid-way continues the next chunk with ``"> "``.

    Args:
        text: mrkdwn, such as :func:`to_mrkdwn` returns.
        limit: Most characters per chunk.

    Returns:
        The chunks in order, without trailing whitespace; empty when ``text`` is blank.

    Raises:
        ValueError: If ``limit`` is below 13, too small to reopen and close a code block
            around one escaped character.
    """
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_LIMIT}, got {limit}")
    text = text.rstrip()
    if len(text) <= limit:
        return [text] if text else []
    return _Cutter(text, limit).chunks()


def _blocks(nodes: list[SyntaxTreeNode], *, quoted: bool, list_depth: int) -> str:
    rendered = (_block(node, quoted=quoted, list_depth=list_depth) for node in nodes)
    return "\n\n".join(block for block in rendered if block)


def _block(node: SyntaxTreeNode, *, quoted: bool, list_depth: int) -> str:
    match node.type:
        case "paragraph":
            return _inlines(node.children, frozenset())
        case "heading":
            title = _inlines(node.children, frozenset({"strong"})).replace("\n", " ")
            return f"*{title}*" if title else ""
        case "fence" | "code_block":
            # Slack ignores a language after the fence, so it is dropped.
            code = _escape(node.content.removesuffix("\n"))
            return f"{_FENCE}\n{code}\n{_FENCE}" if code.strip() else ""
        case "blockquote":
            inner = _blocks(node.children, quoted=True, list_depth=list_depth)
            # Slack has one level of quote, so inner quotes just continue the outer one.
            if quoted or not inner:
                return inner
            return "\n".join(f"{_QUOTE}{line}" if line else ">" for line in inner.split("\n"))
        case "bullet_list" | "ordered_list":
            return _list(node, quoted=quoted, list_depth=list_depth)
        case "hr":
            return _HORIZONTAL_RULE
        case _:
            return _escape(node.content)


def _list(node: SyntaxTreeNode, *, quoted: bool, list_depth: int) -> str:
    ordered = node.type == "ordered_list"
    start = int(node.attrs.get("start", 1)) if ordered else 1
    bullet = _BULLETS[min(list_depth, len(_BULLETS) - 1)]
    lines = []
    for number, item in enumerate(node.children, start=start):
        marker = f"{number}. " if ordered else f"{bullet} "
        # Items read better in chat without the blank lines of a loose list.
        body = "\n".join(
            block
            for child in item.children
            if (block := _block(child, quoted=quoted, list_depth=list_depth + 1))
        )
        lines.append(marker + _indent_following_lines(body, " " * len(marker)) if body else marker)
    return "\n".join(line.rstrip(" ") for line in lines)


def _indent_following_lines(body: str, prefix: str) -> str:
    """Indent every line but the first, leaving lines inside a code block as the code has them."""
    first, *rest = body.split("\n")
    out = [first]
    # Literal "```" in text is broken up by _escape, so every one left is a fence.
    fences = first.count(_FENCE)
    for line in rest:
        out.append(line if fences % 2 or not line else prefix + line)
        fences += line.count(_FENCE)
    return "\n".join(out)


def _inlines(nodes: list[SyntaxTreeNode], active: frozenset[str]) -> str:
    """Render inline nodes; ``active`` holds the spans already open around them."""
    out = ""
    after_span = False
    for node in nodes:
        piece = _inline(node, active)
        if not piece:
            continue
        span = node.type in _MARKERS and node.type not in active
        if out and ((span and _WORD.match(out[-1])) or (after_span and _WORD.match(piece[0]))):
            out += _ZWSP
        out += piece
        after_span = span
    return out


def _inline(node: SyntaxTreeNode, active: frozenset[str]) -> str:
    match node.type:
        case "inline":
            return _inlines(node.children, active)
        case "text":
            return _text(node.content)
        case "softbreak" | "hardbreak":
            return "\n"
        case "code_inline":
            return f"`{_escape(node.content.replace('`', _CODE_BACKTICK))}`"
        case "strong" | "em" | "s":
            inner = _inlines(node.children, active | {node.type})
            # The same marker nested would close the span early, so an inner one is dropped.
            if node.type in active or not inner:
                return inner
            return f"{_MARKERS[node.type]}{inner}{_MARKERS[node.type]}"
        case "link" | "image":
            url = str(node.attrs.get("href" if node.type == "link" else "src", ""))
            if not url.lower().startswith(_LINK_SCHEMES):
                return _inlines(node.children, active)
            label = _plain(node.children)
            # A label that only repeats the address adds nothing; Slack shows <url> as is.
            if label in ("", url, urllib.parse.unquote(url)):
                return f"<{_url(url)}>"
            return f"<{_url(url)}|{_escape(label).replace('|', _LINK_LABEL_BAR)}>"
        case _:
            return _escape(node.content)


def _text(content: str) -> str:
    """Escape plain text, turning bare web addresses into links."""
    out = []
    position = 0
    for match in _BARE_URL.finditer(content):
        url = match.group()
        while url[-1] in _URL_TRAILERS or (url[-1] == ")" and url.count(")") > url.count("(")):
            url = url[:-1]
        out.append(f"{_escape(content[position : match.start()])}<{_url(url)}>")
        position = match.start() + len(url)
    out.append(_escape(content[position:]))
    return "".join(out)


def _plain(nodes: list[SyntaxTreeNode]) -> str:
    """Return the text of inline nodes without formatting, for a link's label."""
    parts = []
    for node in nodes:
        if node.type in ("text", "code_inline"):
            parts.append(node.content)
        elif node.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        else:
            parts.append(_plain(node.children))
    return "".join(parts)


def _url(url: str) -> str:
    return _escape(url).replace("|", "%7C")


def _escape(text: str) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _TRIPLE_BACKTICK.sub("`" + _ZWSP, escaped)


class _Cutter:
    """Chooses the cuts of one text too long for a message; see :func:`split_mrkdwn`."""

    def __init__(self, text: str, limit: int) -> None:
        self.text = text
        self.limit = limit
        # in_code[i]: a code block is open just before text[i] (after all fences ending by i).
        self.in_code = [False] * (len(text) + 1)
        # blocked[i]: a chunk must not end just before text[i].
        self.blocked = [False] * (len(text) + 1)
        fences = list(re.finditer(_FENCE, text))
        for match in [*_ATOM.finditer(text), *fences]:
            for i in range(match.start() + 1, match.end()):
                self.blocked[i] = True
        ends = [match.end() for match in fences]
        if len(ends) % 2:
            ends.append(len(text) + 1)  # a block left open runs to the end
        for opening, closing in zip(ends[::2], ends[1::2], strict=True):
            # A chunk ending on an opening fence would hold an empty code block.
            self.blocked[opening] = True
            self.in_code[opening:closing] = [True] * (closing - opening)

    def chunks(self) -> list[str]:
        text = self.text
        chunks = []
        start = 0
        prefix = ""
        while start < len(text):
            room = self.limit - len(prefix)
            if len(text) - start <= room:
                chunks.append(prefix + text[start:])
                break
            cut = self._best_cut(start, room)
            if not text[start:cut].strip():
                # Code indentation too wide to share a chunk: drop it rather than send blanks.
                start = self._resume(start, keep_indent=False)
                continue
            chunks.append(prefix + text[start:cut] + (_CLOSE if self.in_code[cut] else ""))
            start = self._resume(cut, keep_indent=True)
            line_start = text.rfind("\n", 0, cut) + 1
            quote_goes_on = "\n" not in text[cut:start] and text.startswith(">", line_start)
            prefix = _REOPEN if self.in_code[start] else _QUOTE if quote_goes_on else ""
        return chunks

    def _resume(self, cut: int, *, keep_indent: bool) -> int:
        """Return where the chunk after a cut starts: past the whitespace at the cut."""
        text = self.text
        position = cut
        while position < len(text) and text[position].isspace():
            line_begins = position > cut and text[position - 1] == "\n"
            if keep_indent and self.in_code[position] and line_begins and text[position] != "\n":
                break
            position += 1
        if self.in_code[position] and text.startswith(_FENCE, position):
            # The previous chunk's closing fence already ends this code block.
            return self._resume(position + len(_FENCE), keep_indent=keep_indent)
        return position

    def _best_cut(self, start: int, room: int) -> int:
        """Pick where the chunk starting at ``start`` ends, knowing the rest does not fit."""
        text = self.text

        def fits(cut: int) -> bool:
            return cut - start + (len(_CLOSE) if self.in_code[cut] else 0) <= room

        end = start + room
        best: list[int | None] = [None, None, None, None]
        # A cut starts a whitespace run, so the chunk never ends in whitespace.
        for cut in range(start + 1, end + 1):
            starts_run = text[cut].isspace() and not text[cut - 1].isspace()
            if starts_run and fits(cut) and not self.blocked[cut]:
                best[self._cut_level(cut)] = cut
        halfway = start + room // 2
        candidates = [cut for cut in best if cut is not None]
        for candidate in candidates:
            if candidate > halfway:
                return candidate
        if candidates:
            return max(candidates)
        fitting = [c for c in range(end, start, -1) if fits(c) and not text[c - 1].isspace()]
        clean = (cut for cut in fitting if not self.blocked[cut] and not _joins(text, cut))
        # Failing that, an escape, a link or a character longer than the room is cut anyway.
        return next(clean, fitting[0] if fitting else start + 1)

    def _cut_level(self, cut: int) -> int:
        text = self.text
        after = cut
        while after < len(text) and text[after].isspace():
            after += 1
        breaks = text.count("\n", cut, after)
        if breaks:
            return 0 if breaks > 1 else 1
        before = cut - 1
        while before > 0 and text[before] in _SENTENCE_CLOSERS:
            before -= 1
        return 2 if text[before] in _SENTENCE_END else 3


def _joins(text: str, cut: int) -> bool:
    """Whether ``text[cut - 1]`` and ``text[cut]`` belong to one character on screen."""
    return bool(
        unicodedata.combining(text[cut]) or text[cut] in _JOINERS or text[cut - 1] in _JOINERS
    )
