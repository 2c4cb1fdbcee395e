"""BibTeX field text (LaTeX) to plain Unicode, for display.

BibTeX keeps titles, venues and author names in LaTeX: ``Scaling \\& Shifting``, ``{E$^2$VPT}``,
``Computer Vision -- ECCV 2022``, ``Andr{\\'e}``. Pages, navigation and tables of contents show
them as text (``Scaling & Shifting``, ``E²VPT``, an en dash, ``André``); the BibTeX copy boxes
keep the entry exactly as written. The conversion covers the LaTeX that bibliographies use in
these fields: escaped specials, dashes, quotes, ties, grouping braces, accents and special
letters, font commands, and short math (super- and subscripts, Greek letters).
"""

from __future__ import annotations

import re
import unicodedata

# \& \% ... : characters LaTeX reserves, written escaped.
_ESCAPED = {"&": "&", "%": "%", "$": "$", "#": "#", "_": "_", "{": "{", "}": "}", " ": " ", ",": "\u2009"}

# Accent commands and the combining character each one adds to its letter.
_ACCENTS = {
    "'": "\u0301", "`": "\u0300", "^": "\u0302", '"': "\u0308", "~": "\u0303", "=": "\u0304",
    ".": "\u0307", "u": "\u0306", "v": "\u030c", "H": "\u030b", "c": "\u0327", "k": "\u0328",
    "r": "\u030a", "d": "\u0323", "b": "\u0331",
}

# Letters and symbols written as commands.
_SYMBOLS = {
    "ss": "ß", "o": "ø", "O": "Ø", "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "aa": "å", "AA": "Å",
    "l": "ł", "L": "Ł", "i": "ı", "j": "ȷ", "dh": "ð", "DH": "Ð", "th": "þ", "TH": "Þ",
    "textendash": "–", "textemdash": "—", "textquoteleft": "‘", "textquoteright": "’",
    "textquotedblleft": "“", "textquotedblright": "”", "ldots": "…", "dots": "…", "textellipsis": "…",
    "S": "§", "P": "¶", "copyright": "©", "textregistered": "®", "texttrademark": "™",
    "LaTeX": "LaTeX", "TeX": "TeX", "textbackslash": "\\", "textasciitilde": "~",
    "textasciicircum": "^", "textunderscore": "_", "textbar": "|", "textless": "<",
    "textgreater": ">", "textbullet": "•", "textdegree": "°", "textmu": "µ",
}

_LETTERS = {"ss", "o", "O", "ae", "AE", "oe", "OE", "aa", "AA", "l", "L", "i", "j", "dh", "DH", "th", "TH"}

# Math: Greek letters and a few operators that titles use.
_MATH_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "vartheta": "ϑ", "iota": "ι", "kappa": "κ",
    "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "rho": "ρ", "sigma": "σ",
    "tau": "τ", "upsilon": "υ", "phi": "φ", "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω",
    "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π", "Sigma": "Σ",
    "Upsilon": "Υ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
    "times": "×", "cdot": "·", "pm": "±", "mp": "∓", "leq": "≤", "le": "≤", "geq": "≥", "ge": "≥",
    "neq": "≠", "ne": "≠", "approx": "≈", "sim": "∼", "infty": "∞", "to": "→", "rightarrow": "→",
    "leftarrow": "←", "in": "∈", "ell": "ℓ", "partial": "∂", "nabla": "∇", "sum": "∑", "prod": "∏",
    "circ": "∘", "star": "⋆", "ast": "∗", "prime": "′", "dagger": "†", "ddagger": "‡",
}

SUPERSCRIPTS = dict(zip("0123456789+-=()nixT", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱˣᵀ"))
SUBSCRIPTS = dict(zip("0123456789+-=()aeioxhklmnpst", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑᵢₒₓₕₖₗₘₙₚₛₜ"))

_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)
_GROUP = r"\{((?:[^{}]|\{[^{}]*\})*)\}"  # one brace group, allowing one level of nesting


def _script(text: str, table: dict[str, str], mark: str) -> str:
    """A super- or subscript in Unicode when every character has one, else ``^(text)``."""
    if text and all(char in table for char in text):
        return "".join(table[char] for char in text)
    return f"{mark}({text})" if len(text) > 1 else f"{mark}{text}"


def _math(latex: str) -> str:
    """Short inline math as text: commands to symbols, ^ and _ to super- and subscripts."""
    text = re.sub(r"\\([A-Za-z]+)\s*", lambda m: _MATH_SYMBOLS.get(m.group(1), f"\\{m.group(1)}"), latex)
    text = _commands(text).replace("\x00", "").replace("\x01", "")
    arg = r"(?:\{([^{}]*)\}|(\\?.))"
    text = re.sub(r"\^" + arg, lambda m: _script(m.group(1) if m.group(1) is not None else m.group(2),
                                                 SUPERSCRIPTS, "^"), text)
    text = re.sub(r"_" + arg, lambda m: _script(m.group(1) if m.group(1) is not None else m.group(2),
                                                SUBSCRIPTS, "_"), text)
    return re.sub(r"\s+", " ", text).strip()


def _accent(command: str, letter: str) -> str:
    letter = {"\\i": "i", "\\j": "j"}.get(letter, letter)
    if not letter:
        return unicodedata.normalize("NFC", " " + _ACCENTS[command]).strip()
    return unicodedata.normalize("NFC", letter[0] + _ACCENTS[command]) + letter[1:]


def _symbol(match: re.Match) -> str:
    name, after = match.group(1), match.group(2) or ""
    if name not in _SYMBOLS:
        return match.group(0)
    return _SYMBOLS[name] + (after if after.strip() == "" and name not in _LETTERS else "")


def _commands(text: str) -> str:
    """Accents, symbols, escaped characters and font commands outside math."""
    # accents: \'e \'{e} \'{\i} \c{c} \v s
    text = re.sub(r"\\([`'^\"~=.])\s*(?:\{(\\[ij]|[^{}]?)\}|(\\[ij](?![A-Za-z])|[A-Za-z]))",
                  lambda m: _accent(m.group(1), m.group(2) if m.group(2) is not None else m.group(3)), text)
    text = re.sub(r"\\([uvHckrdb])(?:\s*\{(\\[ij]|[^{}]?)\}|\s+([A-Za-z]))",
                  lambda m: _accent(m.group(1), m.group(2) if m.group(2) is not None else m.group(3)), text)
    # letters and symbols: \ss, \o, \textendash; {} after one only ends its name, and so does
    # a space after a letter (Bj\o rn)
    text = re.sub(r"\\([A-Za-z]+)(\{\}|\s+)?", _symbol, text)
    # other commands keep their argument: \emph{x} -> x
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"\\([A-Za-z]+)\s*" + _GROUP, lambda m: m.group(2), text)
    return re.sub(r"\\([&%$#_{} ,])", lambda m: "\x00" + _ESCAPED[m.group(1)] + "\x01", text)


def latex_to_unicode(text: str) -> str:
    """BibTeX field text as plain Unicode for display.

    Args:
        text: A field value as written in a .bib file, without its outer braces or quotes.

    Returns:
        The text a reader expects: ``\\&`` as ``&``, ``--`` as an en dash and ``---`` as an em
        dash, ``~`` as a no-break space, TeX quotes as typographic quotes, ``\\'e`` as ``é``,
        ``$^2$`` and ``\\(^2\\)`` as ``²``, ``\\emph{x}`` as ``x``, grouping braces removed and
        runs of white space made one space. A command it does not know keeps its argument.

    Examples:
        >>> latex_to_unicode(r"Scaling \\& Shifting")
        'Scaling & Shifting'
        >>> latex_to_unicode(r"{E$^2$VPT}: Pages 1--9")
        'E²VPT: Pages 1–9'
    """
    # Escaped characters are protected (\x00...\x01) so the steps below leave them alone.
    text = text.replace("\\\\", " ")  # a forced line break
    out, last = [], 0
    for match in _MATH.finditer(text):
        if match.start() > 0 and text[match.start() - 1] == "\\" and match.group(0)[0] == "$":
            continue  # \$ is a dollar sign, not math
        out.append(_commands(text[last:match.start()]))
        out.append("\x00" + _math(next(g for g in match.groups() if g is not None)) + "\x01")
        last = match.end()
    out.append(_commands(text[last:]))
    text = "".join(out)
    # Typography outside protected spans: dashes, quotes, ties; then the grouping braces.
    parts = re.split(r"(\x00[^\x01]*\x01)", text)
    for index in range(0, len(parts), 2):
        part = parts[index]
        part = part.replace("---", "—").replace("--", "–")
        part = part.replace("``", "“").replace("''", "”").replace("`", "‘")
        part = part.replace("~", "\u00a0")
        # Unknown commands: drop the backslash, keep the name (better than showing TeX).
        part = re.sub(r"\\([A-Za-z]+)", r"\1", part)
        part = part.replace("{", "").replace("}", "").replace("\\", "")
        parts[index] = part
    text = "".join(p.strip("\x00\x01") if p.startswith("\x00") else p for p in parts)
    return re.sub(r"[ \t\r\n]+", " ", text).strip()
