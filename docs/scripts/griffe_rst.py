"""A griffe extension that reads the reStructuredText markup of sbitk's docstrings as Markdown.

sbitk's docstrings are Google style with Sphinx roles inside (``:math:`x```, ``:class:`~a.B```,
``.. math::`` blocks), which the Markdown renderer of mkdocstrings would print as they are. This
rewrites each docstring before it is parsed:

* ``:math:`x``` becomes ``$x$``, a ``.. math::`` block a ``$$ … $$`` block (pymdownx.arithmatex);
* ``:class:``, ``:func:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:`` become code that links to
  the object's API entry where one exists (an optional autoref, so a target that is not
  documented anywhere stays plain code instead of failing the strict build);
* ``Example:`` becomes ``Examples:``, the section griffe renders as doctest code.

Loaded by mkdocs.yml (``plugins: mkdocstrings: handlers: python: options: extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(class|func|meth|mod|data|attr|obj|exc):`(~?)([^`]+)`")
MATH_ROLE = re.compile(r":math:`([^`]+)`")
MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*(?P<rest>.*)$")
EXAMPLE_TITLE = re.compile(r"^(\s*)Example:\s*$", re.M)


def math_blocks(text: str) -> str:
    """Turn each ``.. math::`` directive (with its indented body) into a ``$$`` block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = MATH_DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        directive, indent = match["indent"], _block_indent(match["indent"], out)
        body = [match["rest"]] if match["rest"].strip() else []
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(directive)
        ):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        body = [line for line in body if line]  # a blank line would end the Markdown block
        if out and out[-1].strip():
            out.append("")
        out += [indent + "$$", *(indent + line for line in body), indent + "$$"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def _block_indent(indent: str, before: list[str]) -> str:
    """Markdown nests a block in a list item at four spaces, where reST used the bullet's two."""
    for line in reversed(before):
        if line.strip():
            depth = len(line) - len(line.lstrip())
            if depth < len(indent):
                if re.match(r"[*+-] |\d+\. ", line.lstrip()):
                    return " " * (depth + 4)
                return indent
    return indent


class RstToMarkdown(griffe.Extension):
    """Rewrite Sphinx roles and math directives in every docstring (see the module docstring)."""

    def on_package(
        self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any
    ) -> None:
        self._walk(pkg, loader, set())

    def _walk(self, obj: griffe.Object, loader: griffe.GriffeLoader, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = self._convert(obj.docstring.value, obj, loader)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, loader, seen)

    def _convert(self, text: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
        text = EXAMPLE_TITLE.sub(r"\1Examples:", text)
        text = math_blocks(text)
        # one line: a continuation line of inline maths that starts with "-" would be a list item
        text = MATH_ROLE.sub(lambda m: "$" + re.sub(r"\s*\n\s*", " ", m[1]) + "$", text)
        return ROLE.sub(lambda m: self._reference(m, obj, loader), text)

    def _reference(self, match: re.Match, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
        short, name = match[2] == "~", match[3].strip()
        label = name.rsplit(".", 1)[-1] if short else name
        if match[1] in ("func", "meth"):
            label += "()"
        path = self._resolve(name, obj, loader)
        code = f"<code>{label}</code>"
        if path is None:
            return code
        return f'<autoref identifier="{path}" optional>{code}</autoref>'

    @staticmethod
    def _resolve(name: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str | None:
        """The full path of ``name`` as seen from ``obj``, or None when it is not sbitk's."""
        scopes = [""]
        scope: griffe.Object | None = obj
        while scope is not None:
            scopes.append(scope.path + ".")
            scope = scope.parent
        for prefix in scopes:
            path = prefix + name
            if not path.startswith("sbitk"):
                continue
            try:
                target = loader.modules_collection[path]
            except Exception:  # any failed lookup means "not documented"
                continue
            if target.is_alias:
                try:
                    return target.final_target.path
                except Exception:  # an alias into another package
                    return None
            return target.path
        return None
