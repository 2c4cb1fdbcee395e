"""The `peft-atlas` command: validate, build, serve and export the knowledge base; run benchmarks."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import scaffold
from .export import export_bibtex, export_json
from .kb import load
from .problems import Problem
from .render import load_generated_data, render_pages
from .schema import json_schemas

SCHEMA_DIR = Path("taxonomy") / "schema"


def _root(args: argparse.Namespace) -> Path:
    return Path(args.root).resolve()


def _report(problems: list[Problem]) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found.", file=sys.stderr)
        return 1
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every file; print every problem; exit 1 if there is any."""
    root = _root(args)
    kb, problems = load(root)
    problems = list(problems) + _schema_problems(root)
    status = _report(problems)
    if status == 0:
        print(f"ok: {len(kb.methods)} methods, {len(kb.bib)} BibTeX entries, "
              f"{len(kb.results)} reported results rows, {len(kb.measured)} measured runs")
    return status


def _schema_problems(root: Path) -> list[Problem]:
    problems = []
    for name, schema in json_schemas().items():
        path = root / SCHEMA_DIR / name
        expected = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != expected:
            problems.append(Problem((SCHEMA_DIR / name).as_posix(), 0, "",
                                    "JSON Schema is missing or out of date (run `peft-atlas schema`)"))
    return problems


def cmd_schema(args: argparse.Namespace) -> int:
    """Write the JSON Schemas of the data files, for editors."""
    directory = _root(args) / SCHEMA_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (directory / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {(SCHEMA_DIR / name).as_posix()}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Render the generated pages into a directory (to inspect them; builds keep them in memory)."""
    root = _root(args)
    started = time.perf_counter()
    kb, problems = load(root)
    if problems:
        return _report(problems)
    pages = render_pages(kb, load_generated_data(root))
    elapsed = time.perf_counter() - started
    out = Path(args.out)
    for path, content in pages.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    print(f"generated {len(pages)} pages in {elapsed:.2f} s into {out}")
    return 0


def _mkdocs_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("NO_MKDOCS_2_WARNING", "1")
    if "SOURCE_DATE_EPOCH" not in env:
        # The sitemap carries a date: take it from the last commit so builds are reproducible.
        try:
            stamp = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%ct"],
                                   capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            stamp = ""
        env["SOURCE_DATE_EPOCH"] = stamp or "0"
    return env


def _mkdocs(root: Path, *arguments: str) -> int:
    command = [sys.executable, "-m", "mkdocs", *arguments, "--config-file", str(root / "mkdocs.yml")]
    return subprocess.run(command, cwd=root, env=_mkdocs_env(root)).returncode


def cmd_build(args: argparse.Namespace) -> int:
    """Validate, then build the static site with mkdocs in strict mode."""
    root = _root(args)
    if cmd_validate(args):
        return 1
    return _mkdocs(root, "build", "--strict", "--site-dir", str(Path(args.site_dir).resolve()))


def cmd_serve(args: argparse.Namespace) -> int:
    """Validate, then serve the site with live reload."""
    root = _root(args)
    if cmd_validate(args):
        return 1
    return _mkdocs(root, "serve", "--dev-addr", args.dev_addr)


def cmd_export(args: argparse.Namespace) -> int:
    """Write the whole knowledge base as one JSON document or one .bib file."""
    kb, problems = load(_root(args))
    if problems:
        return _report(problems)
    text = export_json(kb) if args.format == "json" else export_bibtex(kb)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    """Scaffold a new method: its entry, a BibTeX stub and (--impl) its implementation and test rows."""
    root = _root(args)
    try:
        written = scaffold.write(root, scaffold.plan(root, args.id, args.bib, args.impl))
    except scaffold.ScaffoldError as error:
        print(f"peft-atlas new: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path.as_posix()}")
    print("Next: fill every TODO(new); `peft-atlas validate` lists the ones left (CONTRIBUTING.md).")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark experiment config and write its measured run (needs torch and timm)."""
    from .bench.cli import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `peft-atlas`."""
    # The harness owns its arguments; its cli module imports torch only when a run starts.
    from .bench.cli import add_bench_arguments

    parser = argparse.ArgumentParser(prog="peft-atlas", description=__doc__)
    parser.add_argument("--root", default=".", help="repository root (default: current directory)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("validate", help=cmd_validate.__doc__).set_defaults(run=cmd_validate)
    commands.add_parser("schema", help=cmd_schema.__doc__).set_defaults(run=cmd_schema)
    generate = commands.add_parser("generate", help=cmd_generate.__doc__)
    generate.add_argument("--out", default="build/pages", help="output directory")
    generate.set_defaults(run=cmd_generate)
    build = commands.add_parser("build", help=cmd_build.__doc__)
    build.add_argument("--site-dir", default="site", help="where to write the site (default: site)")
    build.set_defaults(run=cmd_build)
    serve = commands.add_parser("serve", help=cmd_serve.__doc__)
    serve.add_argument("--dev-addr", default="127.0.0.1:8000", help="address to serve on")
    serve.set_defaults(run=cmd_serve)
    export = commands.add_parser("export", help=cmd_export.__doc__)
    export.add_argument("--format", choices=["json", "bibtex"], required=True)
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    export.set_defaults(run=cmd_export)
    new = commands.add_parser("new", help=cmd_new.__doc__)
    new.add_argument("id", help="the method's id: a lowercase slug such as 'my-adapter'")
    new.add_argument("--bib", metavar="KEY", help="bib key of the introducing paper, e.g. hu2022lora")
    new.add_argument("--impl", action="store_true",
                     help="also scaffold reference_impls/methods/<id>.py and its test rows")
    new.set_defaults(run=cmd_new)
    bench = commands.add_parser("bench", help=cmd_bench.__doc__)
    add_bench_arguments(bench)
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
