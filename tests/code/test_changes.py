"""The change report: params, data (item by item from old tables) and metric deltas between two versions."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from art2mus.config import Params
from art2mus.tracking.changes import (
    compare_versions,
    dvc_table_reader,
    keyed_diff,
    manifest_diff,
    params_diff,
    quarantine_diff,
    report_markdown,
    table_kinds,
    training_pairs_diff,
)


def test_params_diff_lists_dotted_keys_changed_added_and_removed() -> None:
    old = {"train": {"steps": 300, "lr": 0.002}, "promotion": {"floors": {"retrieval_top1": 0.25}}, "gone": 1}
    new = {"train": {"steps": 10, "lr": 0.002}, "promotion": {"floors": {"retrieval_top1": 0.25, "gap": 0.0}}}
    assert [(c.key, c.old, c.new) for c in params_diff(old, new)] == [
        ("gone", 1, None), ("promotion.floors.gap", None, 0.0), ("train.steps", 300, 10)]
    assert params_diff(old, old) == []


def tracks(rows: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame({"track_id": list(rows), "sha256": list(rows.values())})


def test_items_are_added_removed_or_changed_by_content_hash() -> None:
    changes = keyed_diff("tracks", tracks({1: "a", 2: "b", 3: "c"}), tracks({2: "b", 3: "C", 4: "d"}), "track_id",
                         "sha256")
    assert (changes.added, changes.removed, changes.changed) == (["4"], ["1"], ["3"])
    files = manifest_diff("data/sample", [{"relpath": "x.mp3", "md5": "1"}, {"relpath": "y.mp3", "md5": "2"}],
                          [{"relpath": "y.mp3", "md5": "3"}, {"relpath": "z.mp3", "md5": "4"}])
    assert (files.added, files.removed, files.changed) == (["z.mp3"], ["x.mp3"], ["y.mp3"])


def quarantine(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["source", "path", "reason"]).assign(item="")


def test_quarantine_changes_are_new_released_and_requarantined_inputs() -> None:
    old = quarantine([("fma", "fma_large/000/000001.mp3", "zero-byte file"), ("artgraph", "imagesf2/a.jpg", "x")])
    new = quarantine([("artgraph", "imagesf2/a.jpg", "not an image"), ("artgraph", "imagesf2/b.jpg", "zero-byte file")])
    changes = quarantine_diff(old, new)
    assert changes.added == ["artgraph:imagesf2/b.jpg"] and changes.removed == ["fma:fma_large/000/000001.mp3"]
    assert changes.changed == ["artgraph:imagesf2/a.jpg"]


def splits(train: list[tuple[str, int]], test: list[tuple[str, int]]) -> pd.DataFrame:
    rows = [(a, t, "train") for a, t in train] + [(a, t, "test") for a, t in test]
    return pd.DataFrame(rows, columns=["artwork_id", "track_id", "split"])


def test_training_pairs_count_only_the_train_split() -> None:
    changes = training_pairs_diff(splits([("a", 1), ("b", 2)], [("c", 3)]), splits([("b", 2), ("d", 4)], [("e", 5)]))
    assert (changes.added, changes.removed) == (["d ~ 4"], ["a ~ 1"])


def evaluation(top1: float, items: int) -> dict:
    """The parts of reports/evaluate/metrics.json the report reads."""
    return {"split": "test", "items": items, "correspondence": {"trained": {
        "retrieval_top1": {"value": top1, "low": top1 - 0.1, "high": top1 + 0.1}, "gap": {"value": 0.01}}}}


def version_tags(params: dict, data: dict[str, str], **extra: str) -> dict[str, str]:
    return {"params": json.dumps(params), "data_hashes": json.dumps(data), **extra}


def test_a_report_against_the_champion_has_params_data_and_paired_metrics() -> None:
    params = Params().model_dump(mode="json")
    params["train"]["steps"] = 600  # the champion's recipe, spelled out (not whatever the default is)
    weak = json.loads(json.dumps(params))
    weak["train"]["steps"] = 10
    kinds = table_kinds(params)
    tables = {"t-old": tracks({1: "a", 2: "b"}), "t-new": tracks({1: "a", 2: "B", 3: "c"}),
              "q-new": quarantine([("fma", "fma_large/000/000009.mp3", "zero-byte file")]),
              "s-old": splits([("a", 1)], [])}  # s-new is not in the cache
    champion = version_tags(params, {"data/interim/tracks.parquet": "t-old", "data/processed/splits.parquet": "s-old",
                                     "data/interim/quarantine.parquet": "q-new", "data/raw/x": "same",
                                     "reports/evaluate/metrics.json": "m-old"})
    candidate = version_tags(weak, {"data/interim/tracks.parquet": "t-new", "data/processed/splits.parquet": "s-new",
                                    "data/interim/quarantine.parquet": "q-new", "data/raw/x": "same",
                                    "reports/evaluate/metrics.json": "m-new"},
                             **{"validation_status": "failed", "decision.champion": "1",
                                "decision.reasons": json.dumps(["retrieval_top1: failed: ..."]),
                                "decision.retrieval_top1.champion": "0.6", "decision.retrieval_top1.challenger": "0.2",
                                "decision.retrieval_top1.improvement": "-0.4",
                                "decision.retrieval_top1.lower_bound": "-0.5",
                                "decision.retrieval_top1.min_improvement": "0", "decision.gap.improvement": "-0.01"})
    report = compare_versions("2", candidate, "1", champion, ["retrieval_top1", "gap"],
                              lambda path, md5: tables.get(md5), kinds, evaluation(0.2, 32), evaluation(0.6, 64))
    assert [(c.key, c.old, c.new) for c in report.params] == [("train.steps", 600, 10)]
    assert [(c.path, c.old, c.new) for c in report.data] == [("data/interim/tracks.parquet", "t-old", "t-new"),
                                                             ("data/processed/splits.parquet", "s-old", "s-new")]
    # (the evaluation's outputs are results, not data: they are in the metrics section)
    [track_changes, split_changes] = report.items
    assert (track_changes.added, track_changes.changed) == (["3"], ["2"])
    assert "s-new is not in the DVC cache" in split_changes.unknown
    assert report.paired["retrieval_top1"]["lower_bound"] == -0.5 and report.paired["gap"] == {"improvement": -0.01}
    markdown = report_markdown(report)
    assert "- `train.steps`: `600` -> `10`" in markdown
    assert "### tracks (data/interim/tracks.parquet)" in markdown and "- added: 1: `3`" in markdown
    assert "- not compared: data/processed/splits.parquet at md5 s-new is not in the DVC cache" in markdown
    assert "| retrieval_top1 | 0.6 | 0.2 | -0.4 | -0.5 | +0 |" in markdown
    assert "| retrieval_top1 | 0.6 [0.5, 0.7] | 0.2 [0.1, 0.3] |" in markdown
    assert "evaluated on different items: champion 64 test, challenger 32 test" in markdown
    assert "- status: failed" in markdown and "retrieval_top1: failed" in markdown


def test_a_verdict_against_another_champion_is_not_shown_as_paired() -> None:
    tags = version_tags({}, {}, **{"decision.champion": "3", "decision.gap.improvement": "0.1"})
    report = compare_versions("5", tags, "4", version_tags({}, {}), ["gap"], lambda *_: None, {})
    assert report.paired == {} and "no paired comparison recorded" in report_markdown(report)


def test_the_first_run_and_the_champion_itself_have_nothing_to_compare() -> None:
    first = compare_versions("1", version_tags({}, {}), None, None, ["gap"], lambda *_: None, {})
    assert "no champion" in first.headline and "no champion" in report_markdown(first)
    same = compare_versions("1", version_tags({}, {}), "1", {}, ["gap"], lambda *_: None, {})
    assert "is the champion: nothing changed" in report_markdown(same)


def test_old_tables_and_directory_manifests_are_read_from_the_dvc_cache(tmp_path: Path) -> None:
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    read = dvc_table_reader(tmp_path)
    cache = tmp_path / ".dvc/cache/files/md5"
    (cache / "ab").mkdir(parents=True)
    tracks({7: "x"}).to_parquet(cache / "ab/cdef")
    (cache / "ab/0123.dir").write_text(json.dumps([{"md5": "1", "relpath": "x.mp3"}]))
    assert read("data/interim/tracks.parquet", "abcdef")["track_id"].tolist() == [7]
    assert read("data/sample", "ab0123.dir") == [{"md5": "1", "relpath": "x.mp3"}]
    assert read("data/interim/tracks.parquet", "ffffff") is None
