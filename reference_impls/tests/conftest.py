"""Pytest configuration of the reference-implementation tests.

Registers the `gpu` marker (also declared in pyproject.toml, so that this directory can be run on
its own) and skips `gpu` tests on machines without CUDA. The models under test are tiny, so CPU
tests run single-threaded: intra-op threads only add synchronisation cost (and spin-waiting on
busy machines).

Every test runs with float64 as the default dtype (models, inputs and method parameters), so
that equivalence checks compare two roundings of the same real-valued function and their
tolerances (in common.py) follow from float64's precision rather than from one CPU's float32
kernels.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped on CPU-only machines)")


@pytest.fixture(autouse=True)
def float64_by_default() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
