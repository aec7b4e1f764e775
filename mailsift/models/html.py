"""HTML mail -> the text a reader sees and the links they could follow.

lexbor (through selectolax) parses; its tree builder is quadratic in nesting depth, so
hostile depth is flattened first (:func:`_flatten_deep_html`).
"""

from __future__ import annotations

import re

from selectolax.lexbor import LexborHTMLParser

__all__ = ["html_to_text"]


def html_to_text(html: str) -> tuple[str, list[str]]:
    """Visible text of an HTML document and the targets of its links.

    Script, style and head contents are dropped: spammers hide words there to poison
    filters, and a reader never sees them.
    """
    try:
        tree = LexborHTMLParser(_flatten_deep_html(html))
        hrefs = [
            href
            for node in tree.css("a[href], area[href]")
            if (href := node.attributes.get("href"))
        ]
        tree.strip_tags(["script", "style", "head", "noscript", "template"])
        body = tree.body
        text = (body if body is not None else tree.root).text(separator=" ") if tree.root else ""
    except Exception:
        return "", []
    return text, hrefs


# lexbor's tree builder walks the stack of open elements for many start tags (is a <p>
# open in button scope?), so 40 000 nested <div>s, or <li><dt> pairs, cost seconds.
# Browsers cap the depth too. Past _HTML_MAX_DEPTH elements left open, further start
# tags are dropped: their text stays, only structure no reader could see is lost. The
# count ignores implied end tags (any pair of elements can be made to nest), so sloppy
# HTML with hundreds of unclosed <p>s is flattened too, harmlessly.
_HTML_MAX_DEPTH = 256
_HTML_CHECK_TAGS = 2 * _HTML_MAX_DEPTH
_HTML_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]{0,40})[^<>]{0,1000}>?")
_HTML_VOID = frozenset({
    "area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "image", "img",
    "input", "keygen", "link", "meta", "param", "source", "track", "wbr",
})  # fmt: skip
# Raw-text elements hold no tags, so they cannot nest; hiding text in them must keep working.
_HTML_RAW = frozenset(
    {"script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes", "plaintext"}
)
# Never dropped: a new <a> closes the open one, and its href is a feature.
_HTML_KEEP = _HTML_RAW | {"a"}


def _flatten_deep_html(html: str) -> str:
    """``html`` with start tags past the nesting cap removed (cheaply skipped for most mail)."""
    if html.count("<") <= _HTML_CHECK_TAGS:
        return html
    open_tags: dict[str, int] = {}
    depth = 0
    pieces: list[str] = []
    kept = 0
    for m in _HTML_TAG.finditer(html):
        closing, name = m.group(1), m.group(2).lower()
        if name in _HTML_VOID or name in _HTML_RAW:
            continue
        if closing:
            if open_tags.get(name):
                open_tags[name] -= 1
                depth -= 1
            continue
        if depth < _HTML_MAX_DEPTH or name in _HTML_KEEP:
            # "<div/>" opens a div all the same: HTML ignores the slash on such elements.
            open_tags[name] = open_tags.get(name, 0) + 1
            depth += 1
            continue
        pieces.append(html[kept : m.start()])
        pieces.append(" ")
        kept = m.end()
    if not pieces:
        return html
    pieces.append(html[kept:])
    return "".join(pieces)
