"""Train/val/test splits grouped by artist (no artist in two splits), stratified by style."""

from __future__ import annotations

import numpy as np
import pandas as pd

from art2mus.config import SplitParams
from art2mus.data.schema import SPLIT_NAMES


def assign_groups(counts: pd.DataFrame, ratios: dict[str, float], seed: int) -> dict[str, str]:
    """Greedy stratified group assignment.

    `counts` is groups x strata (items per group and stratum). Groups go, largest first (ties in
    seeded random order), to the split whose per-stratum counts end closest to the targets.
    """
    rng = np.random.default_rng(seed)
    names = list(ratios)
    share = np.array([ratios[name] for name in names])
    totals = counts.to_numpy().sum(axis=0)
    target = share[:, None] * totals[None, :]  # splits x strata
    current = np.zeros_like(target, dtype=float)
    order = rng.permutation(len(counts))
    sizes = counts.to_numpy().sum(axis=1)
    order = order[np.argsort(-sizes[order], kind="stable")]
    assignment: dict[str, str] = {}
    for index in order:
        row = counts.iloc[index].to_numpy()
        best, best_cost = 0, np.inf
        for split in range(len(names)):
            trial = current.copy()
            trial[split] += row
            # Relative deficit per split, so small splits (val) are not starved by large ones.
            cost = (((trial - target) ** 2) / np.maximum(target, 1.0)).sum()
            if cost < best_cost:
                best, best_cost = split, cost
        current[best] += row
        assignment[counts.index[index]] = names[best]
    return assignment


def make_splits(pairs: pd.DataFrame, params: SplitParams) -> pd.DataFrame:
    """The pairs with a `split` column; every artist lands in exactly one split."""
    ratios = {name: getattr(params.ratios, name) for name in SPLIT_NAMES}
    counts = pd.crosstab(pairs[params.group_by], pairs[params.stratify_by]).sort_index()
    assignment = assign_groups(counts, ratios, params.seed)
    splits = pairs.assign(split=pairs[params.group_by].map(assignment).astype("string"))
    return splits.sort_values(["split", "artwork_id"]).reset_index(drop=True)
