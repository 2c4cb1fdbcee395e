"""Fidelity of a proxy benchmark: does VTAB-micro order methods the way VTAB-1k does?

A proxy is only worth running if its ranking of methods predicts the ranking on the benchmark it
stands in for. The fidelity figure is Spearman's rank correlation between each method's score on
the proxy (measured by this repository's harness) and its score on the real benchmark (reported
by papers), over the methods that have both.

Plain Python on purpose: the docs toolchain has neither numpy nor scipy (nor torch).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import sqrt
from statistics import fmean, median
from typing import Any

from .kb import KnowledgeBase, in_reference_setting, task_mean_of_group_means

__all__ = ["MIN_METHODS", "PROXY_FOR", "Fidelity", "FidelityPair", "LeftOut", "average_ranks",
           "proxy_fidelity", "spearman"]

PROXY_FOR = {"vtab-micro": "vtab-1k"}
"""Proxy benchmark id to the id of the benchmark it stands in for."""

MIN_METHODS = 3
"""Fewest methods a fidelity figure is given for: two methods can only agree or disagree fully."""

# Scores are means of numbers printed to 0.1; rounding before ranking keeps float noise in those
# means from deciding the order of two methods whose scores are equal.
_RANK_DIGITS = 9


def average_ranks(values: Sequence[float]) -> list[float]:
    """Rank values from 1 (the highest); tied values share the mean of the ranks they span.

    Args:
        values: The values to rank.

    Returns:
        The rank of each value, in the order of ``values`` (``[10, 30, 20, 30]`` gives
        ``[4.0, 1.5, 3.0, 1.5]``).
    """
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        # Sorted positions start..end hold ranks start+1..end+1; each tied value gets their mean.
        for index in order[start:end + 1]:
            ranks[index] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the average ranks of x and y.

    Args:
        x: One score per item.
        y: The other score of the same items, in the same order.

    Returns:
        The correlation, from -1 (reversed order) to 1 (same order).

    Raises:
        ValueError: If x and y differ in length, have fewer than two items, or one of them has
            all values equal (its ranks do not vary, so no correlation is defined).
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must pair up, got {len(x)} and {len(y)} values")
    if len(x) < 2:
        raise ValueError(f"a rank correlation needs at least two items, got {len(x)}")
    rank_x, rank_y = average_ranks(x), average_ranks(y)
    mean_x, mean_y = fmean(rank_x), fmean(rank_y)
    dx = [r - mean_x for r in rank_x]
    dy = [r - mean_y for r in rank_y]
    sxx, syy = sum(d * d for d in dx), sum(d * d for d in dy)
    if sxx == 0 or syy == 0:
        raise ValueError("every item has the same score on one side, so the ranks do not vary")
    rho = sum(a * b for a, b in zip(dx, dy)) / sqrt(sxx * syy)
    return max(-1.0, min(1.0, rho))  # rounding must not leave [-1, 1]


@dataclass(frozen=True)
class FidelityPair:
    """A method scored on both benchmarks.

    Attributes:
        method: Method id.
        name: Display name of the method.
        proxy_score: Mean of group means of its measured proxy run (the median over runs if it
            has several).
        proxy_runs: How many measured runs ``proxy_score`` is taken over.
        proxy_rank: Rank among the pairs on the proxy (1 = highest; ties share the mean rank).
        target_score: Median, over its reported rows with every task, of the mean of group means
            recomputed from the row's tasks.
        target_rows: How many reported rows ``target_score`` is the median of.
        target_rank: Rank among the pairs on the target benchmark.
    """

    method: str
    name: str
    proxy_score: float
    proxy_runs: int
    proxy_rank: float
    target_score: float
    target_rows: int
    target_rank: float


@dataclass(frozen=True)
class LeftOut:
    """A method scored on one benchmark only, or on neither with all its numbers.

    Attributes:
        method: Method id (the implementation name for a run no method names).
        name: Display name.
        reason: Why it is not in the correlation.
    """

    method: str
    name: str
    reason: str


@dataclass(frozen=True)
class Fidelity:
    """The fidelity of a proxy benchmark to the benchmark it stands in for.

    Attributes:
        proxy: Proxy benchmark id.
        target: Id of the benchmark it stands in for.
        target_tasks: Tasks a reported row of the target needs to count.
        pairs: The methods scored on both, highest proxy score first.
        left_out: The other methods, by name, each with the reason.
        rho: Spearman's rank correlation over ``pairs``, or None when it cannot be computed.
        reason: Why ``rho`` is None (None when it is not).
    """

    proxy: str
    target: str
    target_tasks: int
    pairs: list[FidelityPair]
    left_out: list[LeftOut]
    rho: float | None
    reason: str | None


def proxy_fidelity(kb: KnowledgeBase, measured: Sequence[Mapping[str, Any]],
                   proxy: str = "vtab-micro") -> Fidelity:
    """Spearman's rank correlation between a proxy benchmark and the benchmark it stands in for.

    A method's proxy score is the mean of group means of its measured run on the proxy (the
    median if it has several; only runs over every task count). Its target score is the median,
    over its reported rows on the target that print every task, copy no earlier row and ran in the
    target's reference setting (backbone and pre-training), of the mean of group means recomputed from the row's tasks (a printed mean is not used). A measured run is linked to a
    method by the method's ``impl`` field, as on the method cards.

    Args:
        kb: The knowledge base (its benchmarks, methods and reported rows).
        measured: Measured rows as ``render.measured_rows`` builds them (``benchmark``,
            ``impl``, ``per_task``, ``mean_of_group_means``); rows of other benchmarks are ignored.
        proxy: Id of the proxy benchmark, a key of ``PROXY_FOR``.

    Returns:
        The pairs with their scores and ranks, the methods left out with why, and the figure, or
        the reason it cannot be computed (fewer than ``MIN_METHODS`` pairs, or no spread).
    """
    target = PROXY_FOR[proxy]
    proxy_benchmark, target_benchmark = kb.benchmarks[proxy], kb.benchmarks[target]
    proxy_tasks = set(proxy_benchmark.task_ids())
    implemented_as = {m.impl: m for m in kb.methods.values() if m.impl}

    proxy_scores: dict[str, list[float]] = defaultdict(list)
    partial_runs: dict[str, int] = defaultdict(int)
    left_out: list[LeftOut] = []
    for run in measured:
        if run["benchmark"] != proxy:
            continue
        method = implemented_as.get(run["impl"])
        if method is None:
            left_out.append(LeftOut(run["impl"], run["impl"],
                                    f"no method of the taxonomy names implementation '{run['impl']}'"))
        elif proxy_tasks <= set(run["per_task"]):
            proxy_scores[method.id].append(run["mean_of_group_means"])
        else:
            partial_runs[method.id] += 1

    target_scores: dict[str, list[float]] = defaultdict(list)
    partial_rows: dict[str, int] = defaultdict(int)
    for loaded in kb.results:
        # a row that copies an earlier source's numbers is that source's result: counted once;
        # a row on another backbone or pre-training measures something else
        if (loaded.benchmark != target or loaded.row.copy_of is not None
                or not in_reference_setting(loaded.row, target_benchmark)):
            continue
        score = task_mean_of_group_means(loaded.row.per_task, target_benchmark)
        if score is None:
            partial_rows[loaded.row.method] += 1
        else:
            target_scores[loaded.row.method].append(score)

    both = sorted(set(proxy_scores) & set(target_scores))
    proxy_values = [round(median(proxy_scores[m]), _RANK_DIGITS) for m in both]
    target_values = [round(median(target_scores[m]), _RANK_DIGITS) for m in both]
    pairs = [FidelityPair(method=m, name=_name(kb, m), proxy_score=median(proxy_scores[m]),
                          proxy_runs=len(proxy_scores[m]), proxy_rank=proxy_rank,
                          target_score=median(target_scores[m]), target_rows=len(target_scores[m]),
                          target_rank=target_rank)
             for m, proxy_rank, target_rank in zip(both, average_ranks(proxy_values),
                                                   average_ranks(target_values))]
    pairs.sort(key=lambda p: (p.proxy_rank, p.name.lower()))

    for method_id in sorted((set(proxy_scores) | set(partial_runs) | set(target_scores) | set(partial_rows))
                            - set(both)):
        reasons = []
        if method_id not in proxy_scores:
            if partial_runs[method_id]:
                reasons.append(f"its {proxy_benchmark.name} run does not cover all "
                               f"{len(proxy_tasks)} tasks")
            elif method_id in kb.methods and kb.methods[method_id].impl is None:
                reasons.append(f"no {proxy_benchmark.name} run (no reference implementation)")
            else:
                reasons.append(f"no {proxy_benchmark.name} run")
        if method_id not in target_scores:
            if partial_rows[method_id]:
                count, tasks = partial_rows[method_id], len(target_benchmark.task_ids())
                reasons.append(f"its reported {target_benchmark.name} row does not print all {tasks} tasks"
                               if count == 1 else
                               f"none of its {count} reported {target_benchmark.name} rows prints all {tasks} tasks")
            else:
                reasons.append(f"no reported {target_benchmark.name} row")
        left_out.append(LeftOut(method_id, _name(kb, method_id), "; ".join(reasons)))
    left_out.sort(key=lambda item: (item.name.lower(), item.method))

    rho: float | None = None
    reason: str | None = None
    if len(pairs) < MIN_METHODS:
        reason = (f"only {len(pairs)} method{'' if len(pairs) == 1 else 's'} "
                  f"{'has' if len(pairs) == 1 else 'have'} both a {proxy_benchmark.name} run and a "
                  f"reported {target_benchmark.name} row with every task, and a rank correlation "
                  f"needs at least {MIN_METHODS}")
    else:
        try:
            rho = spearman(proxy_values, target_values)
        except ValueError as error:
            reason = str(error)
    return Fidelity(proxy=proxy, target=target, target_tasks=len(target_benchmark.task_ids()),
                    pairs=pairs, left_out=left_out, rho=rho, reason=reason)


def _name(kb: KnowledgeBase, method_id: str) -> str:
    method = kb.methods.get(method_id)
    return method.name if method is not None else method_id
