"""The shape of every data file, as pydantic models (also exported as JSON Schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SLUG = r"^[a-z0-9]+(-[a-z0-9]+)*$"
BIB_KEY = r"^[A-Za-z0-9_:.-]+$"
URL = r"^https?://\S+$"
# Names reach the navigation and the <title> of pages, where the theme does not escape them.
PLAIN_NAME = r"^[^<>]+$"
# A preset of a reference implementation ("vtab-1k", "vtab-1k-tt4", "vtab-1k/dtd"), or "<prefix>/*".
PRESET = r"^[a-z0-9]+(-[a-z0-9]+)*(/([a-z0-9_]+|\*))?$"

Relation = Literal["builds_on", "generalizes", "generalized_by", "variant_of",
                   "compared_with", "combines"]
MeanConvention = Literal["mean-of-tasks", "mean-of-group-means", "none"]
Selection = Literal["val200", "last-epoch", "best-test", "not-stated"]
# What a benchmark's rows report: one top-1 accuracy per task, or (base-to-novel generalization of
# CLIP-like models) the accuracy on the base classes a method was trained on, the accuracy on the
# held-out novel classes, and their harmonic mean, per data set.
BenchmarkKind = Literal["accuracy", "base-to-novel"]


class Strict(BaseModel):
    """Base: unknown fields are errors, strings are not coerced into numbers or back."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------- categories.yaml

class Subtype(Strict):
    id: str = Field(pattern=SLUG)
    name: str = Field(pattern=PLAIN_NAME)
    definition: str


class Category(Strict):
    id: str = Field(pattern=SLUG)
    name: str = Field(pattern=PLAIN_NAME)
    definition: str
    subtypes: list[Subtype] = Field(min_length=1)


class FacetValue(Strict):
    id: str = Field(pattern=SLUG)
    name: str
    definition: str


class Facets(Strict):
    prompt_modality: list[FacetValue]
    adapter_role: list[FacetValue]


class InsertionPoint(Strict):
    id: str = Field(pattern=SLUG)
    name: str


class Application(Strict):
    id: str = Field(pattern=SLUG)
    name: str = Field(pattern=PLAIN_NAME)
    definition: str


class CategoriesFile(Strict):
    sources: list[str] = Field(default_factory=list, description="Bib keys of the surveys followed.")
    categories: list[Category] = Field(min_length=1)
    facets: Facets
    insertion_points: list[InsertionPoint] = Field(min_length=1)
    applications: list[Application] = Field(min_length=1)


# ---------------------------------------------------------------- benchmarks.yaml

class Task(Strict):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    name: str


class TaskGroup(Strict):
    id: str = Field(pattern=SLUG)
    name: str
    tasks: list[Task] = Field(min_length=1)


class Setting(Strict):
    """A backbone and its pre-training, as reported rows name them."""

    backbone: str = Field(min_length=1)
    checkpoint: str = Field(min_length=1)


class Benchmark(Strict):
    id: str = Field(pattern=SLUG)
    name: str = Field(pattern=PLAIN_NAME)
    kind: BenchmarkKind = Field(
        default="accuracy",
        description="accuracy: rows give per_task top-1 accuracies; base-to-novel: rows give base, "
                    "novel and harmonic-mean accuracies per task (data set) in base_novel.")
    bib: list[str] = Field(default_factory=list)
    description: str
    groups: list[TaskGroup] = Field(min_length=1)
    reference_setting: Setting | None = Field(
        default=None,
        description="The backbone and pre-training that rankings, charts, the method finder and proxy "
                    "fidelity compare in; rows in other settings are listed with a setting badge.")

    def task_ids(self) -> list[str]:
        """All task ids in column order."""
        return [task.id for group in self.groups for task in group.tasks]


class BenchmarksFile(Strict):
    benchmarks: list[Benchmark] = Field(min_length=1)


# ---------------------------------------------------------------- methods/<id>.yaml

class Related(Strict):
    id: str = Field(pattern=SLUG, description="Id of the related method.")
    relation: Relation


class VlmFacets(Strict):
    prompt_modality: Literal["textual", "visual", "multimodal"] | None = None
    adapter_role: Literal["single-modal", "cross-modal"] | None = None


class Method(Strict):
    """One PEFT method: taxonomy/methods/<id>.yaml."""

    id: str = Field(pattern=SLUG, description="Lowercase slug; equals the file name.")
    name: str = Field(pattern=PLAIN_NAME, description="Short display name (no < or >).")
    full_name: str = Field(pattern=PLAIN_NAME)
    aliases: list[str] = Field(default_factory=list)
    category: str = Field(description="A category id of categories.yaml.")
    subtype: str = Field(description="A subtype id of that category.")
    modality: list[str] = Field(min_length=1)
    vlm: VlmFacets | None = None
    year: int = Field(ge=1980, le=2100)
    venue: str = Field(min_length=1)
    bib: list[str] = Field(min_length=1, description="Bib keys; the first introduced the method.")
    paper: str = Field(pattern=URL)
    code: str | None = Field(default=None, pattern=URL)
    summary: str = Field(min_length=1)
    method: str = Field(min_length=1, description="Markdown with $...$ / $$...$$ math.")
    insertion: list[str] = Field(min_length=1)
    mergeable: bool
    mergeable_note: str | None = None
    trainable_params: str | None = Field(
        default=None, min_length=1,
        description="Formula of the trainable parameters; absent when the paper gives none.")
    applications: list[str] = Field(
        min_length=1, description="Ids of categories.yaml applications: the tasks the paper evaluates on.")
    related: list[Related] = Field(default_factory=list)
    impl: str | None = Field(default=None, pattern=SLUG)


# ---------------------------------------------------------------- reported/<benchmark>/<source>.yaml

class Source(Strict):
    bib: str = Field(pattern=BIB_KEY)
    table: str = Field(min_length=1)


class Seeds(Strict):
    """How many training runs a number stands for, and what the table prints of them."""

    count: int | Literal["not-stated"] = Field(description="Runs per number, or not-stated.")
    shown: Literal["single-run", "mean", "not-stated"] = Field(
        description="The printed number is one run or the mean of several.")


class Protocol(Strict):
    """The protocol fingerprint of a reported row: what decides whether two numbers compare."""

    mean_convention: MeanConvention
    selection: Selection
    selection_evidence: str = Field(
        min_length=1, description="The quote, table caption, or file and line of the released code that "
                                  "shows the selection rule; 'not stated' with what was read, when nothing does.")
    data_source: str = Field(min_length=1)
    image_source: Literal["tfds", "image-files", "not-stated"] = Field(
        description="Images read through TensorFlow Datasets or from image files (file lists).")
    normalization: Literal["imagenet-mean-std", "none", "not-stated"] = Field(
        description="Pixel normalization before the backbone.")
    params_per_task: Literal["average", "fixed", "not-stated"] = Field(
        description="The parameter count is averaged over per-task configurations, or one configuration serves all.")
    seeds: Seeds


class BaseNovel(Strict):
    """Base-to-novel accuracies of one data set (or their printed average), as the source prints them."""

    base: float = Field(description="Top-1 accuracy (%) on the base classes the method was trained on.")
    novel: float = Field(description="Top-1 accuracy (%) on the held-out novel classes.")
    hm: float | None = Field(
        default=None, description="The harmonic mean 2 * base * novel / (base + novel) as printed; "
                                  "checked against the one recomputed from base and novel.")


class ResultRow(Strict):
    method: str = Field(pattern=SLUG)
    label: str | None = None
    backbone: str
    checkpoint: str
    protocol: Protocol
    per_task: dict[str, float] = Field(default_factory=dict)
    group_means: dict[str, float] = Field(default_factory=dict)
    mean: float | None = None
    base_novel: dict[str, BaseNovel] = Field(
        default_factory=dict,
        description="Base-to-novel benchmarks only: base, novel and printed harmonic mean per task.")
    base_novel_mean: BaseNovel | None = Field(
        default=None, description="Base-to-novel benchmarks only: the printed average over the tasks.")
    decimals: int = Field(
        default=2, ge=0, le=4,
        description="Digits the source prints after the decimal point; sets the rounding tolerance "
                    "of the recomputed base-to-novel harmonic means and averages.")
    params_m: float | None = Field(default=None, ge=0)
    params_include_head: bool = Field(
        default=False, description="params_m counts the classifier head too (averaged over the tasks, "
                                   "as the row's mean convention averages).")
    preset: str | None = Field(
        default=None, pattern=PRESET,
        description="The preset of the method's reference implementation that reproduces params_m; "
                    "'<prefix>/*' means the per-task presets '<prefix>/<task>' averaged over the tasks.")
    no_preset: str | None = Field(
        default=None, min_length=1,
        description="Why no preset of the method's reference implementation reproduces params_m "
                    "(e.g. the source does not publish the configuration).")
    source: Source
    copy_of: Source | None = Field(
        default=None, description="The row this one copies (same numbers, cited or identical): comparisons "
                                  "count the original once.")
    note: str | None = None
    known_inconsistency: str | None = Field(
        default=None, description="Why the printed means (or harmonic means) disagree with the "
                                  "printed tasks (a typo in the source); the check is then skipped.")



class ResultsFile(Strict):
    benchmark: str = Field(pattern=SLUG)
    rows: list[ResultRow] = Field(min_length=1)


# ---------------------------------------------------------------- coverage


class ExcludedPaper(Strict):
    """A paper that is deliberately not a method entry, and why."""

    title: str = Field(min_length=1, pattern=PLAIN_NAME)
    url: str = Field(pattern=URL, description="The paper's page (arXiv, publisher or OpenReview).")
    reason: Literal["not-a-method", "out-of-scope", "survey", "duplicate", "unverified"]
    note: str = Field(min_length=1, description="One sentence: what the paper is and why it is not an entry.")
    duplicate_of: str | None = Field(
        default=None, pattern=SLUG, description="With reason duplicate: the method entry that covers it.")


class ExcludedFile(Strict):
    """taxonomy/excluded.yaml: papers of the covered lists that are not entries."""

    papers: list[ExcludedPaper] = Field(min_length=1)


class ListedPaper(Strict):
    title: str = Field(min_length=1)
    paper: str | None = Field(default=None, description="The URL the list gives, if any.")
    entry: str | None = Field(
        default=None, pattern=SLUG,
        description="The method entry, only where the list's title differs from the paper's BibTeX title.")


class PaperList(Strict):
    """taxonomy/coverage/<list>.yaml: a public list of papers the atlas promises to cover."""

    name: str = Field(min_length=1)
    source: str = Field(pattern=URL, description="Where the list is published.")
    papers: list[ListedPaper] = Field(min_length=1)



# ---------------------------------------------------------------- crosswalk


class CrosswalkLibrary(Strict):
    """Another library or benchmark that implements PEFT methods."""

    id: str = Field(pattern=SLUG)
    name: str = Field(pattern=PLAIN_NAME)
    url: str = Field(pattern=URL)
    version: str = Field(min_length=1, description="The release or commit the names were read from.")


class CrosswalkEntry(Strict):
    """The same method in another library: its name there and an equivalent configuration."""

    library: str = Field(pattern=SLUG, description="A library id of the crosswalk file.")
    name: str = Field(min_length=1, description="Class, option or method name in that library.")
    config: str | None = Field(default=None, description="An equivalent configuration, as code or options.")
    note: str | None = Field(default=None, description="Where it differs from the atlas's method or preset.")
    source: str = Field(pattern=URL, description="The file in that library where the name is defined.")


class CrosswalkFile(Strict):
    """taxonomy/crosswalk.yaml: each method's names in other libraries."""

    libraries: list[CrosswalkLibrary] = Field(min_length=1)
    methods: dict[str, list[CrosswalkEntry]] = Field(default_factory=dict)


def json_schemas() -> dict[str, dict]:
    """JSON Schemas of the files contributors edit, keyed by schema file name."""
    return {
        "method.schema.json": Method.model_json_schema(),
        "results.schema.json": ResultsFile.model_json_schema(),
        "categories.schema.json": CategoriesFile.model_json_schema(),
        "benchmarks.schema.json": BenchmarksFile.model_json_schema(),
        "excluded.schema.json": ExcludedFile.model_json_schema(),
        "coverage.schema.json": PaperList.model_json_schema(),
        "crosswalk.schema.json": CrosswalkFile.model_json_schema(),
    }
