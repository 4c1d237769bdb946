"""Griffe extension for the API reference: reST markup in docstrings as Markdown.

normlab's docstrings are Google style, with a few reStructuredText habits that
Markdown does not know: roles such as :func:`normlab.get` or
:class:`~normlab.layers.GroupNormalization`, and a literal block introduced by
a line ending in ``::``. This extension rewrites them when the API reference is
built (``mkdocs.yml``: ``extensions: [docs/scripts/griffe_rst_roles.py]``); the
source files are not changed.

- ``:role:`target``` and ``:role:`~pkg.mod.target``` become the code spans
  ``target`` (the ``~`` form keeps the last component, as Sphinx shows it);
- ``text::`` at the end of a line becomes ``text:``, and ``::`` alone on a
  line is dropped (the indented block after it is already a Markdown code block);
- a doctest (lines from ``>>>`` to the next blank line) becomes a fenced
  ``pycon`` block, so that its output is shown as code, not read as Markdown.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const|term|ref):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(?m)(\S)::[ \t]*$")
_BARE_LITERAL = re.compile(r"(?m)^[ \t]*::[ \t]*$\n?")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _fence_doctests(text: str) -> str:
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        block = []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
            i += 1
        out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
    return "\n".join(out)


def convert(text: str) -> str:
    """The docstring ``text`` with reST roles, ``::`` markers and doctests made Markdown."""
    text = _ROLE.sub(_role, text)
    text = _BARE_LITERAL.sub("", text)
    text = _LITERAL.sub(r"\1:", text)
    return _fence_doctests(text)


def _walk(obj, seen: set) -> None:
    if id(obj) in seen or obj.is_alias:
        return
    seen.add(id(obj))
    if obj.docstring is not None:
        obj.docstring.value = convert(obj.docstring.value)
    for member in obj.members.values():
        _walk(member, seen)


class RstRoles(griffe.Extension):
    """Rewrites reST roles and ``::`` literal markers in every docstring of a package."""

    def on_package(self, *, pkg, **kwargs) -> None:  # noqa: D102 - griffe hook
        _walk(pkg, set())
