"""Stage `split`: artist-grouped, style-stratified train/val/test splits."""

from __future__ import annotations

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.schema import PAIRS_TABLE, SPLITS_TABLE
from art2mus.data.splits import make_splits
from art2mus.io import read_table, write_table_atomic
from art2mus.stages import OpenRun


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Split the pairs and write the splits table."""
    params = load_params(params_file)
    with open_run("split", params.split, params.tracking.experiment) as tracked:
        splits = make_splits(read_table(PAIRS_TABLE), params.split)
        write_table_atomic(splits, SPLITS_TABLE)
        tracked.log_metrics({f"pairs_{name}": count for name, count in splits["split"].value_counts().items()})
