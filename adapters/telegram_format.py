"""Model Markdown as Telegram HTML, cut into messages Telegram accepts.

Telegram's HTML parse mode knows a handful of tags and nothing else, and counts a message's
length after parsing, in UTF-16 code units. :func:`to_telegram_html` renders Markdown with
markdown-it-py into those tags (lists and headings become plain text); :func:`split_html`
cuts the result into chunks under the limit, each with its tags balanced; and
:func:`visible_text` gives the text Telegram would show, for the plain-text fallback.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

__all__ = ["TELEGRAM_TEXT_LIMIT", "split_html", "to_telegram_html", "visible_text"]

TELEGRAM_TEXT_LIMIT = 4096
"""Most UTF-16 code units Telegram accepts in one message's text after entity parsing."""

# Raw HTML from the model must reach the user as text, never as markup.
_PARSER = MarkdownIt("commonmark", {"html": False}).enable("strikethrough")
_LINK_SCHEMES = ("http:", "https:", "tg:", "mailto:")
_LANGUAGE = re.compile(r"[\w#+.-]+")
_HORIZONTAL_RULE = "——————"
_BULLETS = ("•", "◦")

_ATOM = re.compile(
    r"(?P<tag><(?P<close>/?)(?P<name>[a-zA-Z][\w-]*)[^<>]*>)"
    r"|(?P<entity>&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[a-zA-Z][a-zA-Z0-9]*);)"
    r"|(?P<char>[\s\S])"
)
_SENTENCE_END = frozenset(".!?…")
_SENTENCE_CLOSERS = frozenset("\"')]»\u201d\u2019")
# A hard cut before one of these would tear a character apart (accents, emoji sequences).
_JOINERS = frozenset("\u200d\ufe0e\ufe0f")


def to_telegram_html(markdown: str) -> str:
    """Render Markdown written by a model as Telegram HTML.

    Bold, italic, strikethrough, code, fenced code, links, and block quotes become Telegram
    tags; lists and headings become plain text ("• item", "1. item", a bold line). Every
    piece of text is escaped, so raw HTML in the input shows up literally.

    Args:
        markdown: CommonMark text, with ``~~strikethrough~~``.

    Returns:
        HTML for Telegram's ``parse_mode="HTML"``; no longer than Telegram allows is *not*
        guaranteed, see :func:`split_html`.
    """
    root = SyntaxTreeNode(_PARSER.parse(markdown))
    return _blocks(root.children, quoted=False, list_depth=0)


def visible_text(html_text: str) -> str:
    """Return the text Telegram shows for ``html_text``: tags removed, entities decoded.

    Args:
        html_text: Telegram HTML, such as :func:`to_telegram_html` returns.

    Returns:
        The plain text, suitable for sending without a parse mode.
    """
    return "".join(atom.text for atom in _atoms(html_text) if atom.kind == "char")


def split_html(html_text: str, limit: int = TELEGRAM_TEXT_LIMIT) -> list[str]:
    """Cut Telegram HTML into chunks whose visible text is at most ``limit`` UTF-16 units.

    Cuts fall, in order of preference, at a blank line, a line break, a sentence end, a
    space, and only when a stretch has none of these, inside a word; a preferred boundary
    must leave the chunk at least half full, else the last boundary of any kind is used,
    so an early blank line does not produce a tiny message. The whitespace at a cut
    is dropped (inside ``<pre>`` only the line break, so indentation survives). Tags open at
    a cut are closed at the end of the chunk and reopened, with their attributes, at the
    start of the next one, so each chunk is valid HTML on its own.

    Args:
        html_text: Telegram HTML, such as :func:`to_telegram_html` returns.
        limit: Most UTF-16 code units of visible text per chunk.

    Returns:
        The chunks in order; empty when there is no visible text.

    Raises:
        ValueError: If ``limit`` is below 2, too small for one astral character.
    """
    if limit < 2:
        raise ValueError(f"limit must be at least 2, got {limit}")
    atoms = _atoms(html_text)
    chars = [i for i, atom in enumerate(atoms) if atom.kind == "char"]
    # Telegram trims a message, so trailing whitespace neither counts nor gets sent.
    while chars and atoms[chars[-1]].text.isspace():
        chars.pop()
    if not chars:
        return []
    units = [0]
    for i in chars:
        units.append(units[-1] + _utf16_len(atoms[i].text))
    if units[-1] <= limit:
        return [html_text]
    text = [atoms[i].text for i in chars]
    in_pre = _inside_pre(atoms, chars)
    ranges = _char_ranges(text, in_pre, units, limit)
    return _render_chunks(atoms, chars, ranges)


@dataclass(frozen=True, slots=True)
class _Atom:
    """One tag or one visible character of Telegram HTML, with its source text."""

    kind: Literal["open", "close", "char"]
    raw: str
    name: str = ""
    text: str = ""


def _blocks(nodes: list[SyntaxTreeNode], *, quoted: bool, list_depth: int) -> str:
    rendered = (_block(node, quoted=quoted, list_depth=list_depth) for node in nodes)
    return "\n\n".join(block for block in rendered if block)


def _block(node: SyntaxTreeNode, *, quoted: bool, list_depth: int) -> str:
    match node.type:
        case "paragraph":
            return "".join(_inline(child) for child in node.children)
        case "heading":
            # Telegram shows bold inside bold as plain bold, so the inner tags are noise.
            title = "".join(_inline(child, bold=True) for child in node.children)
            return f"<b>{title}</b>" if title else ""
        case "fence" | "code_block":
            return _code_block(node.content, node.info)
        case "blockquote":
            inner = _blocks(node.children, quoted=True, list_depth=list_depth)
            # Telegram refuses a quote inside a quote, so inner quotes just continue it.
            return inner if quoted or not inner else f"<blockquote>{inner}</blockquote>"
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
    """Indent every line but the first, leaving lines inside ``<pre>`` as the code has them."""
    first, *rest = body.split("\n")
    out = [first]
    # Text is escaped, so every "<pre" in the body is a tag this module wrote.
    depth = first.count("<pre") - first.count("</pre>")
    for line in rest:
        out.append(line if depth > 0 or not line else prefix + line)
        depth += line.count("<pre") - line.count("</pre>")
    return "\n".join(out)


def _code_block(content: str, info: str) -> str:
    code = _escape(content.removesuffix("\n"))
    words = info.split()
    if words and _LANGUAGE.fullmatch(words[0]):
        return f'<pre><code class="language-{words[0]}">{code}</code></pre>'
    return f"<pre>{code}</pre>"


def _inline(node: SyntaxTreeNode, *, bold: bool = False) -> str:
    inner = "".join(_inline(child, bold=bold or node.type == "strong") for child in node.children)
    match node.type:
        case "inline":
            return inner
        case "softbreak" | "hardbreak":
            return "\n"
        case "code_inline":
            return f"<code>{_escape(node.content)}</code>"
        case "strong":
            return inner if bold else f"<b>{inner}</b>"
        case "em":
            return f"<i>{inner}</i>"
        case "s":
            return f"<s>{inner}</s>"
        case "link":
            return _link(str(node.attrs.get("href", "")), inner)
        case "image":
            return _link(str(node.attrs.get("src", "")), inner)
        case _:
            return _escape(node.content) + inner


def _link(url: str, inner: str) -> str:
    if not url.lower().startswith(_LINK_SCHEMES):
        return inner
    return f'<a href="{html.escape(url, quote=True)}">{inner or _escape(url)}</a>'


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _utf16_len(text: str) -> int:
    return sum(2 if ord(char) > 0xFFFF else 1 for char in text)


def _atoms(html_text: str) -> list[_Atom]:
    atoms: list[_Atom] = []
    for match in _ATOM.finditer(html_text):
        raw = match.group()
        if match["tag"]:
            kind: Literal["open", "close"] = "close" if match["close"] else "open"
            atoms.append(_Atom(kind, raw, name=match["name"].lower()))
        elif match["entity"] and len(decoded := html.unescape(raw)) == 1:
            atoms.append(_Atom("char", raw, text=decoded))
        elif match["entity"]:
            # Not an entity Telegram would decode either: it shows the characters as written.
            atoms.extend(_Atom("char", char, text=char) for char in raw)
        else:
            atoms.append(_Atom("char", raw, text=raw))
    return atoms


def _inside_pre(atoms: list[_Atom], chars: list[int]) -> list[bool]:
    flags = []
    depth = 0
    position = 0
    for index in chars:
        for atom in atoms[position:index]:
            if atom.name == "pre":
                depth += 1 if atom.kind == "open" else -1
        flags.append(depth > 0)
        position = index
    return flags


def _char_ranges(
    text: list[str], in_pre: list[bool], units: list[int], limit: int
) -> list[tuple[int, int]]:
    """Choose the cuts: ``(start, end)`` character indices per chunk."""
    ranges = []
    total = len(text)
    start = 0
    while start < total:
        end = start
        while end < total and units[end + 1] - units[start] <= limit:
            end += 1
        if end == total:
            ranges.append((start, total))
            break
        cut = _best_cut(text, start, end)
        if not "".join(text[start:cut]).strip():
            # Indentation kept at a cut in code but too long to share a chunk: drop it
            # rather than send a message of blanks, which Telegram refuses.
            while text[start].isspace():
                start += 1
            continue
        resume = cut
        while resume < total and text[resume].isspace():
            if in_pre[resume] and text[resume] != "\n":
                break
            resume += 1
        ranges.append((start, cut))
        start = resume
    return ranges


def _best_cut(text: list[str], start: int, end: int) -> int:
    """Pick where the chunk ``text[start:]`` ends, knowing ``text[start:end]`` fits."""
    best: list[int | None] = [None, None, None, None]
    # A cut starts a whitespace run, so the chunk never ends in whitespace.
    for cut in range(start + 1, end + 1):
        if not text[cut].isspace() or text[cut - 1].isspace():
            continue
        level = _cut_level(text, cut)
        best[level] = cut
    halfway = start + (end - start) // 2
    candidates = [cut for cut in best if cut is not None]
    for candidate in candidates:
        if candidate > halfway:
            return candidate
    return max(candidates) if candidates else _hard_cut(text, start, end)


def _cut_level(text: list[str], cut: int) -> int:
    if text[cut] == "\n":
        return 0 if cut + 1 < len(text) and text[cut + 1] == "\n" else 1
    before = cut - 1
    while before > 0 and text[before] in _SENTENCE_CLOSERS:
        before -= 1
    return 2 if text[before] in _SENTENCE_END else 3


def _hard_cut(text: list[str], start: int, end: int) -> int:
    cut = end
    while cut - 1 > start and (
        unicodedata.combining(text[cut]) or text[cut] in _JOINERS or text[cut - 1] in _JOINERS
    ):
        cut -= 1
    return cut


def _render_chunks(
    atoms: list[_Atom], chars: list[int], ranges: list[tuple[int, int]]
) -> list[str]:
    chunks = []
    stack: list[_Atom] = []
    carried: list[_Atom] = []
    position = 0
    for number, (start, end) in enumerate(ranges):
        parts = [atom.raw for atom in stack]
        for atom in carried:
            _apply(stack, atom)
            parts.append(atom.raw)
        last = number == len(ranges) - 1
        stop = chars[end - 1] + 1
        for atom in atoms[position : chars[start]]:
            # Only whitespace dropped before the first character can be here.
            if atom.kind != "char":
                _apply(stack, atom)
                parts.append(atom.raw)
        for atom in atoms[chars[start] : stop]:
            _apply(stack, atom)
            parts.append(atom.raw)
        # Between this chunk's last character and the next one's first: closing tags end
        # this chunk, anything opened goes to the next, dropped whitespace goes nowhere.
        carried = []
        following = len(atoms) if last else chars[ranges[number + 1][0]]
        for atom in atoms[stop:following]:
            if atom.kind == "char":
                continue
            if last or (atom.kind == "close" and not carried):
                _apply(stack, atom)
                parts.append(atom.raw)
            else:
                carried.append(atom)
        parts.extend(f"</{atom.name}>" for atom in reversed(stack))
        chunks.append("".join(parts))
        position = following
    return chunks


def _apply(stack: list[_Atom], atom: _Atom) -> None:
    if atom.kind == "open":
        stack.append(atom)
    elif atom.kind == "close":
        for depth in range(len(stack) - 1, -1, -1):
            if stack[depth].name == atom.name:
                del stack[depth:]
                break
