"""Math rendered at build time: LaTeX to MathML, so pages need no script and no CDN."""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

# What pymdownx.arithmatex (generic mode) leaves in the HTML for inline and display math.
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_DISPLAY = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)
# Math inside the Markdown fields of the data files.
MATH_IN_MARKDOWN = re.compile(r"\$\$(.+?)\$\$|\$([^$\n]+?)\$", re.S)
# A macro the converter does not know comes out as its own name in an element's text.
_LEAKED_MACRO = re.compile(r">(\\[A-Za-z]+)<")


def latex_to_mathml(latex: str, display: bool = False) -> str:
    """Convert one LaTeX formula to a MathML element.

    Args:
        latex: The formula, without delimiters.
        display: Block (True) or inline (False) layout.

    Raises:
        ValueError: If the formula cannot be converted.
    """
    try:
        return convert(latex.strip(), display="block" if display else "inline")
    except Exception as error:  # latex2mathml raises many exception types
        raise ValueError(f"cannot render the LaTeX '{latex.strip()}': {error}") from error


def _unbalanced_braces(latex: str) -> bool:
    depth = 0
    for char in re.sub(r"\\[{}]", "", latex):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return True
    return depth != 0


def math_problems(text: str) -> list[str]:
    """Messages for every formula in a Markdown text that cannot be rendered."""
    messages = []
    for match in MATH_IN_MARKDOWN.finditer(text):
        latex = match.group(1) or match.group(2)
        if _unbalanced_braces(latex):
            messages.append(f"unbalanced braces in the LaTeX '{latex.strip()}'")
            continue
        try:
            mathml = latex_to_mathml(latex)
        except ValueError as error:
            messages.append(str(error))
            continue
        for macro in dict.fromkeys(_LEAKED_MACRO.findall(mathml)):
            messages.append(f"unknown LaTeX macro '{macro}' in '{latex.strip()}': the page would show it "
                            "as text (use a standard macro, e.g. \\mathrm{...} or \\operatorname{...})")
    return messages


def render_math_in_html(page_html: str) -> str:
    """Replace arithmatex's placeholders in rendered HTML by MathML."""
    page_html = _DISPLAY.sub(
        lambda m: '<div class="atlas-math">' + latex_to_mathml(html.unescape(m.group(1)), True) + "</div>",
        page_html)
    return _INLINE.sub(lambda m: latex_to_mathml(html.unescape(m.group(1))), page_html)
