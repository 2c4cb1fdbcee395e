"""Trainable-parameter counts as papers print them, for the method-specific tests.

A paper prints the parameters a method adds to ViT-B/16 in millions (`params_m` of the rows in
`taxonomy/reported/<benchmark>/*.yaml`, usually without the head) at some precision, e.g. 0.16 or
0.157. `added_parameters` counts what our implementation adds for a configuration and
`assert_printed` checks that it rounds to the printed number at the printed precision.
`reported_rows` reads the rows with their counts as printed (as text, to keep the precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import yaml

import reference_impls as ri
from reference_impls.param_counts import backbone

TAXONOMY = Path(__file__).resolve().parents[2] / "taxonomy"
RESULTS = TAXONOMY / "reported"

# Classes of each task, for counts that include the classifier head: the --num-classes of SSF's
# per-task scripts (train_scripts/vit/vtab/*/train_ssf.sh and train_scripts/vit/fgvc/*/train_ssf.sh
# of github.com/dongzelian/SSF); the VTAB-1k ones are also the class_num of FacT/configs/*/<task>.yaml
# in github.com/JieShibo/PETL-ViT. Task ids as in taxonomy/benchmarks.yaml.
HEAD_CLASSES: dict[str, dict[str, int]] = {
    "vtab-1k": {"cifar100": 100, "caltech101": 102, "dtd": 47, "flowers102": 102, "pets": 37, "svhn": 10,
                "sun397": 397, "camelyon": 2, "eurosat": 10, "resisc45": 45, "retinopathy": 5, "clevr_count": 8,
                "clevr_dist": 6, "dmlab": 6, "kitti_dist": 4, "dsprites_loc": 16, "dsprites_ori": 16,
                "smallnorb_azi": 18, "smallnorb_ele": 9},
    "fgvc": {"cub200": 200, "nabirds": 555, "oxford_flowers": 102, "stanford_dogs": 120, "stanford_cars": 196},
}
PER_CLASS = 768 + 1  # one row of ViT-B/16's linear head and its bias


@dataclass(frozen=True)
class Reported:
    """One printed count: `printed` as in the paper (a string, to keep its precision), the results
    file (relative to taxonomy/reported) and the row label it is stored under."""

    printed: str
    file: str
    label: str

    @property
    def id(self) -> str:
        return f"{Path(self.file).stem}:{self.label}={self.printed}"


def added_parameters(method: str, **kwargs: Any) -> int:
    """Trainable parameters a method adds to ViT-B/16 (100 classes), excluding the head.

    Args:
        method: Registry name.
        **kwargs: As for `ri.apply` (config fields, `preset=`).
    """
    model = backbone()
    ri.apply(model, method, **kwargs)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("head.", "head_dist.")))
    return ri.trainable_parameters(model) - head


def in_millions(count: float, printed: str) -> str:
    """`count` (an average may be fractional) in millions, rounded half-up to as many decimals as
    `printed` has."""
    return str((Decimal(count) / Decimal(10**6)).quantize(Decimal(printed), rounding=ROUND_HALF_UP))


def assert_printed(count: int, reported: Reported) -> None:
    """Assert that `count` parameters print as `reported.printed` million."""
    ours = in_millions(count, reported.printed)
    assert ours == reported.printed, f"{count} parameters print as {ours} M, {reported.id} prints {reported.printed} M"


def stored_params_m(reported: Reported, method: str) -> list[float] | None:
    """`params_m` of the rows of `method` labelled `reported.label` in the results file, or None
    when the taxonomy is not next to the package (an installed copy)."""
    path = RESULTS / reported.file
    if not path.is_file():
        return None
    rows = yaml.safe_load(path.read_text(encoding="utf-8"))["rows"]
    return [row.get("params_m") for row in rows if row.get("method") == method and row.get("label") == reported.label]


class _PrintedNumbers(yaml.SafeLoader):
    """A YAML loader that keeps numbers as the text they are written as (0.60 stays "0.60")."""


for _tag in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int"):
    _PrintedNumbers.add_constructor(_tag, lambda loader, node: loader.construct_scalar(node))


@dataclass(frozen=True)
class ReportedRow:
    """One row of a results file: the file (relative to taxonomy/reported), its benchmark, the
    row's index and the row itself, numbers as printed text."""

    file: str
    benchmark: str
    index: int
    row: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{Path(self.file).with_suffix('')}[{self.index}]:{self.row['method']}"


def reported_rows() -> list[ReportedRow]:
    """Every row of taxonomy/reported/**/*.yaml; empty when the taxonomy is not next to the
    package (an installed copy)."""
    rows = []
    for path in sorted(RESULTS.rglob("*.yaml")) if RESULTS.is_dir() else []:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_PrintedNumbers)
        file = path.relative_to(RESULTS).as_posix()
        rows += [ReportedRow(file, document["benchmark"], index, row) for index, row in enumerate(document["rows"])]
    return rows
