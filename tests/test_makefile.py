"""`make help` lists every target with its description."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_lists_every_phony_target() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split()
    listed = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    described = dict(re.findall(r"^  make (\S+) +(.+)$", listed, re.M))
    assert sorted(described) == sorted(phony)
    assert all(len(text) > 10 for text in described.values())
    # plain `make` shows the help rather than installing anything
    default = subprocess.run(["make", "--no-print-directory", "-n"], cwd=REPO, capture_output=True, text=True)
    assert default.stdout.startswith("awk ")
