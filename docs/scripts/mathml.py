"""MkDocs hook of the sbitk site (named in mkdocs.yml under ``hooks``): math as MathML.

``pymdownx.arithmatex`` (generic mode) wraps the TeX of ``$...$`` in
``<span class="arithmatex">\\(...\\)</span>`` and of ``$$...$$`` in
``<div class="arithmatex">\\[...\\]</div>``. This hook converts each of them to MathML with
latex2mathml when the page is built, so that browsers draw the formulas themselves: the site
loads no math library, from a CDN or elsewhere, and works offline. A formula latex2mathml
cannot convert, or one that keeps an unknown command (which it would show as raw TeX), fails
the build and names the page.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

#: arithmatex's generic output: the tag, then the TeX between \( \) or \[ \].
MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*'
    r"(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])\s*</(?P=tag)>",
    re.S,
)
#: TeX left in the MathML (a backslash): latex2mathml did not know a command, or kept a
#: delimiter as typed.
LEFTOVER = re.compile(r"\\(?:[A-Za-z]+|.)")
#: A sized delimiter (``\big\lVert``): latex2mathml sizes the delimiter but writes a command
#: as typed, so the delimiter becomes its character first.
SIZED = re.compile(r"(\\[Bb]igg?[lrm]?)\s*(\\[A-Za-z]+|\\[|{}])")
DELIMITERS = {
    "\\|": "\u2016", "\\Vert": "\u2016", "\\lVert": "\u2016", "\\rVert": "\u2016",
    "\\vert": "|", "\\lvert": "|", "\\rvert": "|", "\\{": "{", "\\}": "}",
    "\\langle": "\u27e8", "\\rangle": "\u27e9",
}  # fmt: skip
#: Escaped characters in text (``\text{min\_scale}``), which latex2mathml keeps as typed.
TEXT = re.compile(r"<mtext>(.*?)</mtext>", re.S)
TEXT_ESCAPES = {
    "\\_": "_", "\\&": "&amp;", "\\#": "#", "\\%": "%", "\\$": "$", "\\{": "{", "\\}": "}",
}  # fmt: skip
#: Operator names latex2mathml does not know, written as \operatorname{...} instead.
OPERATORS = re.compile(r"\\(arg)(?![A-Za-z])")


def _unescape_text(text: str) -> str:
    for escaped, char in TEXT_ESCAPES.items():
        text = text.replace(escaped, char)
    return text


def to_mathml(tex: str, display: bool) -> str:
    """The MathML of one formula; ``ValueError`` when it cannot be converted faithfully."""
    sized = SIZED.sub(lambda m: m.group(1) + " " + DELIMITERS.get(m.group(2), m.group(2)), tex)
    sized = OPERATORS.sub(r"\\operatorname{\1}", sized)
    try:
        mathml = convert(sized, display="block" if display else "inline")
    except Exception as exc:
        raise ValueError(f"cannot convert ${tex}$ to MathML: {exc}") from exc
    mathml = TEXT.sub(lambda m: "<mtext>" + _unescape_text(m.group(1)) + "</mtext>", mathml)
    unknown = LEFTOVER.search(mathml)
    if unknown:
        raise ValueError(f"${tex}$: latex2mathml does not know {unknown.group()}")
    return mathml


def render_math(page_html: str) -> str:
    """``page_html`` with every arithmatex formula replaced by its MathML."""

    def replace(match: re.Match) -> str:
        display = match.group("block") is not None
        tex = html.unescape(match.group("block") if display else match.group("inline"))
        mathml = to_mathml(tex.strip(), display)
        if display:
            return f'<div class="arithmatex">{mathml}</div>'
        return f'<span class="arithmatex">{mathml}</span>'

    return MATH.sub(replace, page_html)


def on_page_content(html: str, page, **kwargs) -> str:
    try:
        return render_math(html)
    except ValueError as exc:
        raise PluginError(f"{page.file.src_uri}: {exc}") from exc
