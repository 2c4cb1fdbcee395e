"""Shared fixtures: a small, valid knowledge base in a temporary folder that tests may break."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LORA = """\
id: lora
name: LoRA
full_name: Low-Rank Adaptation
aliases: [low-rank adaptation]
category: partial
subtype: reparameter
modality: [vision]
year: 2022
venue: ICLR 2022
bib: [hu2022lora]
paper: https://arxiv.org/abs/2106.09685
summary: Learns a low-rank update of frozen weights.
method: |
  The update is $\\Delta W = B A$ with rank $r$.

  $$
  h = W_0 x + \\frac{\\alpha}{r} B A x
  $$
insertion: [attention-qkv]
applications: [image-classification]
mergeable: true
trainable_params: '$2rd$ per adapted matrix'
related:
  - {id: dora, relation: generalized_by}
"""

DORA = """\
id: dora
name: DoRA
full_name: Weight-Decomposed Low-Rank Adaptation
category: partial
subtype: reparameter
modality: [vision]
year: 2024
venue: ICML 2024
bib: [liu2024dora]
paper: https://arxiv.org/abs/2402.09353
summary: Splits weights into magnitude and direction and adapts the direction with LoRA.
method: 'Magnitude $m$ times the normalized direction.'
insertion: [attention-qkv]
applications: [image-classification, language]
mergeable: true
trainable_params: '$2rd + d$ per adapted matrix'
related:
  - {id: lora, relation: builds_on}
"""

HU_BIB = """\
@inproceedings{hu2022lora,
  title = {LoRA: Low-Rank Adaptation of Large Language Models},
  author = {Hu, Edward J. and Shen, Yelong},
  booktitle = {International Conference on Learning Representations},
  year = {2022},
}
"""

LIU_BIB = """\
@inproceedings{liu2024dora,
  title = {DoRA: Weight-Decomposed Low-Rank Adaptation},
  author = {Liu, Shih-Yang},
  booktitle = {International Conference on Machine Learning},
  year = {2024},
}
"""

TASKS = ["cifar100", "caltech101", "dtd", "flowers102", "pets", "svhn", "sun397", "camelyon",
         "eurosat", "resisc45", "retinopathy", "clevr_count", "clevr_dist", "dmlab", "kitti_dist",
         "dsprites_loc", "dsprites_ori", "smallnorb_azi", "smallnorb_ele"]


def results_yaml(mean: float = 70.0, convention: str = "mean-of-tasks") -> str:
    """A results file with one LoRA row whose 19 tasks are all 70.0."""
    per_task = ", ".join(f"{t}: 70.0" for t in TASKS)
    return f"""\
benchmark: vtab-1k
rows:
  - method: lora
    backbone: ViT-B/16
    checkpoint: ImageNet-21k supervised
    protocol: {{mean_convention: {convention}, selection: val200, data_source: synthetic, selection_evidence: synthetic, image_source: image-files, normalization: imagenet-mean-std, params_per_task: fixed, seeds: {{count: 1, shown: single-run}}}}
    per_task: {{{per_task}}}
    mean: {mean}
    params_m: 0.29
    source: {{bib: hu2022lora, table: "Table 1"}}
"""


B2N_TASKS = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101",
             "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
B2N_RESULTS = "taxonomy/reported/base-to-novel/hu2022lora.yaml"


def base_novel_yaml(hm: float = 74.67, mean_hm: float = 74.67, bib: str = "hu2022lora", extra: str = "") -> str:
    """A base-to-novel results file with one LoRA row: base 80 and novel 70 on every data set,
    whose harmonic mean is 74.666... (printed 74.67). The data set ``dtd`` is on line 17."""
    tasks = "".join(f"      {t}: {{base: 80.0, novel: 70.0, hm: {hm}}}\n" for t in B2N_TASKS)
    return f"""\
benchmark: base-to-novel
rows:
  - method: lora
    backbone: CLIP ViT-B/16
    checkpoint: OpenAI CLIP
    protocol: {{mean_convention: mean-of-tasks, selection: not-stated, data_source: synthetic, selection_evidence: synthetic, image_source: image-files, normalization: imagenet-mean-std, params_per_task: fixed, seeds: {{count: 1, shown: single-run}}}}
    source: {{bib: {bib}, table: "Table 1"}}
    base_novel:
{tasks}    base_novel_mean: {{base: 80.0, novel: 70.0, hm: {mean_hm}}}
{extra}"""


def write_base_novel(root: Path, text: str, relative: str = B2N_RESULTS) -> None:
    """Write a base-to-novel results file into the mini knowledge base."""
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_text(text, encoding="utf-8")


def write_mini_kb(root: Path) -> Path:
    """Write a valid two-method knowledge base (plus the site config) under ``root``."""
    (root / "taxonomy" / "methods").mkdir(parents=True)
    (root / "taxonomy" / "reported" / "vtab-1k").mkdir(parents=True)
    (root / "bib").mkdir()
    categories = (REPO / "taxonomy" / "categories.yaml").read_text(encoding="utf-8")
    categories = "\n".join(line for line in categories.splitlines() if not line.startswith("sources:"))
    (root / "taxonomy" / "categories.yaml").write_text(categories, encoding="utf-8")
    benchmarks = (REPO / "taxonomy" / "benchmarks.yaml").read_text(encoding="utf-8")
    # The mini knowledge base has two bib entries: the benchmarks cite none.
    (root / "taxonomy" / "benchmarks.yaml").write_text(
        re.sub(r"(?m)^(\s+)bib: \[[^\]]*\]$", r"\1bib: []", benchmarks), encoding="utf-8")
    (root / "taxonomy" / "methods" / "lora.yaml").write_text(LORA, encoding="utf-8")
    (root / "taxonomy" / "methods" / "dora.yaml").write_text(DORA, encoding="utf-8")
    (root / "taxonomy" / "reported" / "vtab-1k" / "hu2022lora.yaml").write_text(results_yaml(), encoding="utf-8")
    (root / "bib" / "hu2022lora.bib").write_text(HU_BIB, encoding="utf-8")
    (root / "bib" / "liu2024dora.bib").write_text(LIU_BIB, encoding="utf-8")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copytree(REPO / "taxonomy" / "schema", root / "taxonomy" / "schema")
    return root


def edit(root: Path, relative: str, old: str, new: str) -> None:
    path = root / relative
    text = path.read_text(encoding="utf-8")
    assert old in text, f"fixture changed: {old!r} not in {relative}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def write(root: Path, relative: str, text: str) -> None:
    (root / relative).write_text(text, encoding="utf-8")


@pytest.fixture
def mini_kb(tmp_path: Path) -> Path:
    """A valid knowledge base in a temporary folder."""
    return write_mini_kb(tmp_path / "kb")
