"""Stage `split`: artist-grouped, style-stratified train/val/test splits."""

from art2mus.config import load_params
from art2mus.data.schema import PAIRS_TABLE, SPLITS_TABLE
from art2mus.data.splits import make_splits
from art2mus.io import read_table, write_table_atomic
from art2mus.stage import run_stage
from art2mus.tracking import stage_run


def main() -> None:
    params = load_params()
    with stage_run("split", params.split, params.tracking.experiment) as run:
        splits = make_splits(read_table(PAIRS_TABLE), params.split)
        write_table_atomic(splits, SPLITS_TABLE)
        run.log_metrics({f"pairs_{name}": count for name, count in splits["split"].value_counts().items()})


if __name__ == "__main__":
    run_stage("split", main)
