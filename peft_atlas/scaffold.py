"""`peft-atlas new`: the files of a new method, every fact to fill marked ``TODO(new)``.

`peft-atlas validate` reports each marker left (in the method entry, its BibTeX stub and, with an
implementation, its Python files), so a contributor works through that list until it is empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from .problems import TODO_MARKER as MARKER
from .schema import BIB_KEY, SLUG

# Where an implementation's test rows go: the end of these two lists.
CASES_FILE = "reference_impls/tests/common.py"
COUNTS_FILE = "reference_impls/tests/test_param_counts.py"
_LIST_END = {CASES_FILE: "CASES: list[Case] = [", COUNTS_FILE: "COUNTS = ["}


class ScaffoldError(ValueError):
    """The scaffold cannot be written (nothing was written)."""


@dataclass(frozen=True)
class Scaffold:
    """What `new` writes: new files with their text, and lines added to existing files."""

    files: dict[Path, str]
    insertions: dict[Path, str]


def plan(root: Path, method_id: str, bib_key: str | None = None, impl: bool = False) -> Scaffold:
    """Compute the files of a new method without writing anything.

    Args:
        root: Repository root.
        method_id: The new method's id (lowercase slug; the file and registry name).
        bib_key: Key of the introducing paper's BibTeX; a stub is planned unless bib/<key>.bib exists.
        impl: Also plan the implementation file and its two test rows.

    Raises:
        ScaffoldError: If the id or key is malformed, or the method (or its implementation) exists.
    """
    if not re.fullmatch(SLUG, method_id):
        raise ScaffoldError(f"id '{method_id}': expected a lowercase slug (letters, digits and single hyphens)")
    if bib_key is not None and not re.fullmatch(BIB_KEY, bib_key):
        raise ScaffoldError(f"--bib '{bib_key}': expected a key like hu2022lora (last name, year, first word)")
    entry = root / "taxonomy" / "methods" / f"{method_id}.yaml"
    if entry.exists():
        raise ScaffoldError(f"{entry.relative_to(root)} already exists: nothing was written")
    env = Environment(loader=PackageLoader("peft_atlas", "templates/scaffold"), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, autoescape=False)
    bib_placeholder = f'"{MARKER}: the bib key of the introducing paper, e.g. hu2022lora (a file bib/<key>.bib)"'
    files = {entry: env.get_template("method.yaml.j2").render(id=method_id, bib=bib_key or bib_placeholder,
                                                             impl=impl)}
    if bib_key is not None and not (root / "bib" / f"{bib_key}.bib").exists():
        files[root / "bib" / f"{bib_key}.bib"] = env.get_template("entry.bib.j2").render(key=bib_key)
    insertions: dict[Path, str] = {}
    if impl:
        module = method_id.replace("-", "_")
        source = root / "reference_impls" / "methods" / f"{module}.py"
        if source.exists():
            raise ScaffoldError(f"{source.relative_to(root)} already exists: nothing was written")
        class_name = "".join(part.capitalize() for part in method_id.split("-"))
        if not class_name[0].isalpha():
            class_name = "Method" + class_name
        files[source] = env.get_template("impl.py.j2").render(
            id=method_id, module=module, class_name=class_name, bib=bib_key or f"{MARKER}")
        insertions[root / CASES_FILE] = (
            f'    # {MARKER}: the paper\'s configuration on a tiny model; identity=False if the method does\n'
            f'    # not start at the backbone, mergeable=False if it cannot be merged.\n'
            f'    Case("{method_id}"),\n')
        insertions[root / COUNTS_FILE] = (
            f"    # {MARKER}: the trainable parameters of {method_id} on ViT-B/16 (plus HEAD), as a formula\n"
            f"    # derived from the paper, replacing None.\n"
            f'    ("{method_id}", {{}}, None),\n')
        for path in insertions:
            if not path.is_file() or _LIST_END[path.relative_to(root).as_posix()] not in path.read_text("utf-8"):
                raise ScaffoldError(f"{path.relative_to(root)}: cannot find where to add the test row")
    return Scaffold(files, insertions)


def _insert_before_list_end(text: str, opening: str, lines: str) -> str:
    """Add `lines` before the `]` closing the list that starts at `opening`."""
    start = text.index(opening)
    end = text.index("\n]", start)
    return text[: end + 1] + lines + text[end + 1:]


def write(root: Path, scaffold: Scaffold) -> list[Path]:
    """Write a planned scaffold; returns the paths written or changed, relative to `root`."""
    for path, text in scaffold.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for path, lines in scaffold.insertions.items():
        opening = _LIST_END[path.relative_to(root).as_posix()]
        path.write_text(_insert_before_list_end(path.read_text("utf-8"), opening, lines), encoding="utf-8")
    return [p.relative_to(root) for p in [*scaffold.files, *scaffold.insertions]]


def marker_lines(root: Path) -> list[tuple[str, int, str]]:
    """Every ``TODO(new)`` left in the implementation files: (file, line, the text after it)."""
    found = []
    package = root / "reference_impls"
    for path in sorted(package.rglob("*.py")) if package.is_dir() else []:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if MARKER in line:
                found.append((path.relative_to(root).as_posix(), number,
                              line.split(MARKER, 1)[1].lstrip(": ").strip().rstrip('"').strip()))
    return found
