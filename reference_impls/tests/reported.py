"""Trainable-parameter counts as papers print them, for the method-specific tests.

A paper prints the parameters a method adds to ViT-B/16 in millions (`params_m` of the rows in
`taxonomy/reported/vtab-1k/*.yaml`, usually without the head) at some precision, e.g. 0.16 or
0.157. `added_parameters` counts what our implementation adds for a configuration and
`assert_printed` checks that it rounds to the printed number at the printed precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import timm

import reference_impls as ri

RESULTS = Path(__file__).resolve().parents[2] / "taxonomy" / "reported"


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
    """Trainable parameters a method adds to ViT-B/16 (100 classes), excluding the head."""
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100, device="meta")
    ri.apply(model, method, **kwargs)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("head.", "head_dist.")))
    return ri.trainable_parameters(model) - head


def in_millions(count: int, printed: str) -> str:
    """`count` in millions, rounded half-up to as many decimals as `printed` has."""
    return str((Decimal(count) / Decimal(10**6)).quantize(Decimal(printed), rounding=ROUND_HALF_UP))


def assert_printed(count: int, reported: Reported) -> None:
    """Assert that `count` parameters print as `reported.printed` million."""
    ours = in_millions(count, reported.printed)
    assert ours == reported.printed, f"{count} parameters print as {ours} M, {reported.id} prints {reported.printed} M"


def stored_params_m(reported: Reported, method: str) -> list[float] | None:
    """`params_m` of the rows of `method` labelled `reported.label` in the results file, or None
    when the taxonomy is not next to the package (an installed copy) or PyYAML is missing."""
    path = RESULTS / reported.file
    try:
        import yaml
    except ImportError:  # pragma: no cover - timm depends on PyYAML
        return None
    if not path.is_file():
        return None
    rows = yaml.safe_load(path.read_text(encoding="utf-8"))["rows"]
    return [row.get("params_m") for row in rows if row.get("method") == method and row.get("label") == reported.label]
