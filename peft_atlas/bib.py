"""BibTeX: one entry per file under bib/, parsed with bibtexparser and checked per entry type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import logging

import bibtexparser
from bibtexparser.middlewares import SeparateCoAuthors, SplitNameParts
from bibtexparser.model import DuplicateBlockKeyBlock

from .latex import latex_to_unicode
from .problems import TODO_MARKER, Problem

# The parser logs its own account of a broken entry; the problem it raises says it once, with the
# file and line, so the parser's log stays silent.
_PARSER_LOG = logging.getLogger("bibtexparser")
_PARSER_LOG.addHandler(logging.NullHandler())
_PARSER_LOG.propagate = False

REQUIRED_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    # Each inner tuple is "one of these"; every inner tuple must be satisfied.
    "inproceedings": (("author",), ("title",), ("booktitle",), ("year",)),
    "article": (("author",), ("title",), ("journal",), ("year",)),
    "misc": (("author",), ("title",), ("year",), ("eprint", "howpublished", "url")),
    "book": (("author", "editor"), ("title",), ("publisher",), ("year",)),
    "incollection": (("author",), ("title",), ("booktitle",), ("publisher",), ("year",)),
    "phdthesis": (("author",), ("title",), ("school",), ("year",)),
    "techreport": (("author",), ("title",), ("institution",), ("year",)),
}


@dataclass
class BibEntry:
    """One parsed BibTeX entry.

    Attributes:
        key: The citation key.
        entry_type: Lowercase type (``inproceedings``, ``article``, ...).
        fields: Field name (lowercase) to value, braces stripped of the outer pair (LaTeX as
            written; ``title`` and ``venue`` give the text to display).
        authors: Author names as "First Last", in Unicode for display (``Andr{\\'e}`` as ``André``).
        source_text: The entry exactly as written in its file.
        file: Path of its file, relative to the repository root.
        line: Line where it starts.
    """

    key: str
    entry_type: str
    fields: dict[str, str]
    authors: list[str]
    source_text: str
    file: str
    line: int
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """The title as text to display (LaTeX converted to Unicode)."""
        return _plain(self.fields.get("title", ""))

    @property
    def year(self) -> str:
        return self.fields.get("year", "")

    @property
    def venue(self) -> str:
        """Where the paper appeared, as text to display (LaTeX converted to Unicode)."""
        for name in ("booktitle", "journal", "howpublished", "publisher", "school"):
            if name in self.fields:
                return _plain(self.fields[name])
        if "eprint" in self.fields:
            return f"arXiv:{self.fields['eprint']}"
        return ""


def _plain(text: str) -> str:
    """A field's LaTeX as Unicode text for display: the copy boxes keep ``source_text``."""
    return latex_to_unicode(text)


def _author_names(value: str) -> list[str]:
    library = bibtexparser.parse_string(
        "@misc{x, author = {" + value + "}}",
        append_middleware=[SeparateCoAuthors(), SplitNameParts()],
    )
    names = []
    for entry in library.entries:
        for parts in entry.fields_dict["author"].value:
            first = " ".join(parts.first)
            von = " ".join(parts.von)
            last = " ".join(parts.last)
            jr = " ".join(parts.jr)
            name = " ".join(p for p in (first, von, last) if p)
            names.append(_plain(f"{name}, {jr}" if jr else name))
    return names


def parse_bib_file(path: Path, root: Path) -> tuple[list[BibEntry], list[Problem]]:
    """Parse one .bib file and check its entries' required fields.

    Args:
        path: The .bib file.
        root: Repository root, for relative paths in problems.

    Returns:
        The entries that parsed and the problems found.
    """
    rel = path.relative_to(root).as_posix()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return [], [Problem(rel, 0, "", f"cannot read the file: {error}")]
    problems: list[Problem] = []
    try:
        library = bibtexparser.parse_string(text)
    except Exception as error:  # bibtexparser raises assorted errors on broken input
        return [], [Problem(rel, 0, "", f"malformed BibTeX: {error}")]
    for block in library.failed_blocks:
        line = (block.start_line or 0) + 1
        if isinstance(block, DuplicateBlockKeyBlock):
            problems.append(Problem(rel, line, block.key, f"duplicate BibTeX key '{block.key}'"))
            continue
        error = getattr(block, "error", None)
        reason = (str(getattr(error, "abort_reason", "") or error or "").strip().rstrip(".").lower()
                  or "syntax error")
        problems.append(Problem(rel, line, "", f"malformed BibTeX entry starting here: {reason} "
                                "(expected @type{key, field = {value}, ...})"))
    entries: list[BibEntry] = []
    for entry in library.entries:
        line = (entry.start_line or 0) + 1
        fields = {f.key.lower(): str(f.value).strip() for f in entry.fields}
        entry_type = entry.entry_type.lower()
        required = REQUIRED_FIELDS.get(entry_type)
        if required is None:
            problems.append(Problem(rel, line, entry.key,
                                    f"unsupported entry type @{entry_type} (expected one of "
                                    f"{', '.join('@' + t for t in sorted(REQUIRED_FIELDS))})"))
            continue
        todos = [name for name, value in fields.items() if TODO_MARKER in value]
        for name in todos:
            what = fields[name].split(TODO_MARKER, 1)[1].lstrip(": ").strip()
            problems.append(Problem(rel, line, f"{entry.key}.{name}", f"to fill: {what}"))
        if todos:
            continue
        for alternatives in required:
            if not any(fields.get(name) for name in alternatives):
                wanted = " or ".join(alternatives)
                problems.append(Problem(rel, line, f"{entry.key}.{alternatives[0]}",
                                        f"@{entry_type} needs the field '{wanted}'"))
        year = fields.get("year", "")
        if year and not (year.isdigit() and len(year) == 4):
            problems.append(Problem(rel, line, f"{entry.key}.year",
                                    f"expected a four-digit year, got '{year}'"))
        try:
            authors = _author_names(fields["author"]) if fields.get("author") else []
        except Exception:
            authors = []
            problems.append(Problem(rel, line, f"{entry.key}.author", "cannot split the author list"))
        entries.append(BibEntry(key=entry.key, entry_type=entry_type, fields=fields,
                                authors=authors, source_text=entry.raw.strip(), file=rel, line=line))
    return entries, problems
