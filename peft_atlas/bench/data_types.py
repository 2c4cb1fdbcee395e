"""The contract between data sources (VTAB-1k folders, VTAB-micro, the CLIP protocols) and the training loops."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass
class TaskData:
    """One classification task, ready for the training loop.

    Every dataset yields ``(image, label)`` with ``image`` a float tensor of shape
    (3, image_size, image_size), already normalized, and ``label`` an int in [0, num_classes).

    Attributes:
        name: Task id (``cifar100``, ``micro-digits``, ...).
        group: Task group (``natural``, ``specialized``, ``structured``).
        num_classes: Number of classes.
        train: The training split (VTAB-1k: train800, or train800val200 for final runs).
        val: The split used to select the epoch (VTAB-1k: val200), or None.
        test: The split the reported accuracy is measured on.
        source: Where the data came from, for the provenance record.
        fingerprint: sha256 over the exact examples of every split (file bytes or array bytes,
            plus labels and split membership), so a result names the data it was measured on.
    """

    name: str
    group: str
    num_classes: int
    train: Dataset
    val: Dataset | None
    test: Dataset
    source: str
    fingerprint: str


@dataclass
class ClipTaskData:
    """One data set of a CLIP protocol (few-shot or base-to-novel), ready for the CLIP loop.

    Every dataset yields ``(image, label)`` as for [`TaskData`][peft_atlas.bench.data_types.TaskData],
    with labels indexing the class names of its own classes: `classnames` for `train`, `val`
    and `test`, `novel_classnames` for `novel_test`.

    Attributes:
        name: Task (data set) id.
        group: Task group.
        classnames: Names of the classes trained and tested on, in label order (base-to-novel:
            the base classes).
        train: K images per class (`shots`).
        val: min(K, 4) images per class, or None when the data set has no validation split.
        test: The test images of `classnames`.
        novel_classnames: Base-to-novel: the novel classes (never trained on), else None.
        novel_test: Base-to-novel: the test images of the novel classes, else None.
        shots: K, training images per class.
        source: Where the data came from, for the provenance record.
        fingerprint: sha256 over the class names and the exact examples of every split.
    """

    name: str
    group: str
    classnames: list[str]
    train: Dataset
    val: Dataset | None
    test: Dataset
    novel_classnames: list[str] | None
    novel_test: Dataset | None
    shots: int
    source: str
    fingerprint: str

    @property
    def num_classes(self) -> int:
        """Classes trained and tested on."""
        return len(self.classnames)
