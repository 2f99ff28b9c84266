"""Data tests: both gates pass on good data; each expectation fails on its planted defect."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from art2mus.config import SplitCounts, ValidateRawParams, ValidateSplitsParams
from art2mus.io import read_json
from art2mus.quality import GateFailed, GateReport, enforce, validate_raw, validate_splits

RAW_PARAMS = ValidateRawParams()  # at least 16 artworks and 16 tracks, at most 5% quarantined
SPLITS_PARAMS = ValidateSplitsParams(min_pairs_per_split=SplitCounts(train=12, val=4, test=8))

N_ARTISTS = 8
ARTWORKS_PER_ARTIST = 4
N_TRACKS = 40  # 32 paired with an artwork, 8 extra (as in real FMA)
ARTIST_SPLITS = ["train"] * 4 + ["val"] * 2 + ["test"] * 2  # 16 / 8 / 8 pairs

NOT_NULL = "expect_column_values_to_not_be_null"
UNIQUE = "expect_column_values_to_be_unique"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
REGEX = "expect_column_values_to_match_regex"
OF_TYPE = "expect_column_values_to_be_of_type"
IN_TYPE_LIST = "expect_column_values_to_be_in_type_list"
COLUMNS = "expect_table_columns_to_match_set"
ROW_COUNT = "expect_table_row_count_to_be_between"
A_AT_LEAST_B = "expect_column_pair_values_a_to_be_greater_than_b"


# --- a good data set --------------------------------------------------------------------------


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_artworks() -> pd.DataFrame:
    """32 artworks by 8 artists, with the schema's columns and one extra export column."""
    rows = []
    for artist in range(N_ARTISTS):
        for number in range(ARTWORKS_PER_ARTIST):
            name = f"a{artist}-{number}.jpg"
            rows.append(
                {
                    "artwork_id": name,
                    "path": f"imagesf2/{name}",
                    "title": f"Study {number}",
                    "artist": f"artist{artist}",
                    "style": ["Baroque", "Cubism"][artist % 2],
                    "genre": "landscape",
                    "date": "1900",
                    "sha256": sha256_of(name),
                    "bytes": 2048,
                    "width": 128,
                    "height": 96,
                    "mode": "RGB",
                    "format": "JPEG",
                    "emotion": "calm",
                }
            )
    return pd.DataFrame(rows)


def make_tracks() -> pd.DataFrame:
    """40 decodable tracks with ids 1..40."""
    rows = []
    for track_id in range(1, N_TRACKS + 1):
        rows.append(
            {
                "track_id": track_id,
                "path": f"fma_large/000/{track_id:06d}.mp3",
                "title": f"Track {track_id}",
                "artist": "FMA artist",
                "album": "Album",
                "genre_top": "Rock",
                "genres": [12],
                "genres_all": [12, 38],
                "license": "CC BY 4.0",
                "duration_meta": 4.0,
                "sha256": sha256_of(f"track{track_id}"),
                "bytes": 64000,
                "duration": 4.0,
                "sample_rate": 16000,
                "channels": 1,
                "frames": 64000,
            }
        )
    return pd.DataFrame(rows)


def make_quarantine(n_fma: int = 1) -> pd.DataFrame:
    """`n_fma` quarantined FMA files (1 of 41 files = 2.4%, under the 5% allowed)."""
    return pd.DataFrame(
        {
            "source": ["fma"] * n_fma,
            "item": [str(100 + i) for i in range(n_fma)],
            "path": [f"fma_large/000/{100 + i:06d}.mp3" for i in range(n_fma)],
            "reason": ["not decodable"] * n_fma,
        }
    )


def make_splits(artworks: pd.DataFrame) -> pd.DataFrame:
    """Artwork i paired with track i + 1, split by artist: 16 train, 8 val, 8 test pairs."""
    artist_index = artworks["artist"].str.removeprefix("artist").astype(int)
    return pd.DataFrame(
        {
            "artwork_id": artworks["artwork_id"],
            "track_id": range(1, len(artworks) + 1),
            "artist": artworks["artist"],
            "style": artworks["style"],
            "genre": artworks["genre"],
            "track_genre_top": "Rock",
            "license": "CC BY 4.0",
            "split": [ARTIST_SPLITS[i] for i in artist_index],
        }
    )


def good_data() -> dict[str, pd.DataFrame]:
    artworks = make_artworks()
    return {
        "artworks": artworks,
        "tracks": make_tracks(),
        "quarantine": make_quarantine(),
        "splits": make_splits(artworks),
    }


def run_raw(data: dict[str, pd.DataFrame]) -> GateReport:
    return validate_raw(data["artworks"], data["tracks"], data["quarantine"], RAW_PARAMS)


def run_splits(data: dict[str, pd.DataFrame]) -> GateReport:
    return validate_splits(data["splits"], data["artworks"], data["tracks"], SPLITS_PARAMS)


def failed_expectations(report: GateReport) -> set[tuple[str, str, str | None]]:
    """(table, expectation type, column) of every failed expectation in the full results."""
    failed = set()
    for table, suite in report.result["suites"].items():
        for item in suite["results"]:
            if not item["success"]:
                config = item["expectation_config"]
                column = config["kwargs"].get("column") or config["kwargs"].get("column_A")
                failed.add((table, config["type"], column))
    return failed


# --- both gates pass on good data -------------------------------------------------------------


@pytest.fixture(scope="module")
def passing_reports() -> dict[str, GateReport]:
    data = good_data()
    return {"validate_raw": run_raw(data), "validate_splits": run_splits(data)}


@pytest.mark.parametrize("gate", ["validate_raw", "validate_splits"])
def test_gate_passes_on_good_data(passing_reports, gate, tmp_path):
    report = passing_reports[gate]
    assert report.success, report.summary
    assert failed_expectations(report) == set()
    assert report.summary.startswith(f"{gate}: passed all ")

    path = tmp_path / "reports" / f"{gate}.json"
    assert enforce(report, path) is report  # no exception, and the JSON is written on pass too
    written = read_json(path)
    assert written["success"] is True
    assert written["statistics"]["unsuccessful_expectations"] == 0
    assert f"(full results: {path})" in report.summary
    assert written["summary"] == report.summary  # a passing gate's report keeps its summary too


def test_raw_results_cover_every_table(passing_reports):
    result = passing_reports["validate_raw"].result
    assert set(result["suites"]) == {"artworks", "tracks", "quarantine", "quarantine.by_source"}
    json.dumps(result)  # JSON-serialisable as it is, no default= needed
    kinds = {item["expectation_config"]["type"] for item in result["suites"]["artworks"]["results"]}
    assert {COLUMNS, OF_TYPE, NOT_NULL, UNIQUE, BETWEEN, IN_SET, REGEX, ROW_COUNT} <= kinds


def test_splits_results_cover_every_table(passing_reports):
    result = passing_reports["validate_splits"].result
    assert set(result["suites"]) == {
        "splits",
        "splits.artwork_id_refs",
        "splits.track_id_refs",
        "splits.artist_splits",
        "splits.artwork_splits",
        "splits.track_splits",
        "splits.split_counts",
    }
    json.dumps(result)


# --- validate_raw fails on each planted defect ----------------------------------------------


def null_artwork_id(data):
    data["artworks"].loc[3, "artwork_id"] = None


def duplicate_track_id(data):
    data["tracks"].loc[5, "track_id"] = 5


def zero_width(data):
    data["artworks"].loc[2, "width"] = 0


def unknown_mode(data):
    data["artworks"].loc[4, "mode"] = "XYZ"


def track_too_long(data):
    data["tracks"].loc[7, "duration"] = 1201.0


def unknown_sample_rate(data):
    data["tracks"].loc[8, "sample_rate"] = 12345


def three_channels(data):
    data["tracks"].loc[9, "channels"] = 3


def null_license(data):
    data["tracks"].loc[10, "license"] = None


def bad_sha256(data):
    data["artworks"].loc[6, "sha256"] = "not-a-hash"


def too_few_artworks(data):
    data["artworks"] = data["artworks"].head(10)


def width_as_text(data):
    data["artworks"]["width"] = data["artworks"]["width"].astype(str)


def missing_sha256_column(data):
    data["artworks"] = data["artworks"].drop(columns="sha256")


def too_many_quarantined(data):
    data["quarantine"] = make_quarantine(n_fma=5)  # 5 of 45 files = 11.1%


RAW_DEFECTS = {
    "null artwork_id": (
        null_artwork_id,
        {("artworks", NOT_NULL, "artwork_id")},
        ["artworks.artwork_id", "not be null", "1 of 32 rows unexpected", "(rows [3])"],
    ),
    "duplicate track_id": (
        duplicate_track_id,
        {("tracks", UNIQUE, "track_id")},
        ["tracks.track_id", "expect values to be unique", "2 of 40 rows", "[5, 5]"],
    ),
    "width 0": (
        zero_width,
        {("artworks", BETWEEN, "width")},
        ["artworks.width", "between 1 and 20000", "[0] (artwork_id: ['a0-2.jpg'])"],
    ),
    "mode XYZ": (
        unknown_mode,
        {("artworks", IN_SET, "mode")},
        ["artworks.mode", "['XYZ']"],
    ),
    "duration too long": (
        track_too_long,
        {("tracks", BETWEEN, "duration")},
        ["tracks.duration", "between 1 and 1200", "[1201.0] (track_id: [8])"],
    ),
    "bad sample rate": (
        unknown_sample_rate,
        {("tracks", IN_SET, "sample_rate")},
        ["tracks.sample_rate", "in [8000, 11025, 16000, 22050, 32000, 44100, 48000]", "[12345]"],
    ),
    "three channels": (
        three_channels,
        {("tracks", IN_SET, "channels")},
        ["tracks.channels", "expect values in [1, 2]"],
    ),
    "null license": (
        null_license,
        {("tracks", NOT_NULL, "license")},
        ["tracks.license", "(track_id: [11])"],
    ),
    "bad sha256": (
        bad_sha256,
        {("artworks", REGEX, "sha256")},
        ["artworks.sha256", "^[0-9a-f]{64}$", "['not-a-hash']"],
    ),
    "too few artworks": (
        too_few_artworks,
        {("artworks", ROW_COUNT, None)},
        ["artworks  ", "expect at least 16 artworks: observed 10"],
    ),
    "width stored as text": (
        width_as_text,
        {("artworks", IN_TYPE_LIST, "width"), ("artworks", BETWEEN, "width")},
        ["artworks.width", "expect type in ['int64', 'Int64Dtype']: observed 'str'"],
    ),
    "missing sha256 column": (
        missing_sha256_column,
        {
            ("artworks", COLUMNS, None),
            ("artworks", OF_TYPE, "sha256"),
            ("artworks", NOT_NULL, "sha256"),
            ("artworks", REGEX, "sha256"),
        },
        [
            "artworks  expect the artworks columns of art2mus.data.schema: missing ['sha256']",
            "artworks  3 expectations could not run on the missing columns ['sha256']",
        ],
    ),
    "quarantine ratio over threshold": (
        too_many_quarantined,
        {("quarantine.by_source", BETWEEN, "ratio")},
        ["quarantine.by_source.ratio", "fma: 5 of 45 files quarantined (11.1%) > 5.0% allowed"],
    ),
}


@pytest.mark.parametrize("defect", RAW_DEFECTS)
def test_validate_raw_fails_on_planted_defect(defect, tmp_path):
    plant, expected, fragments = RAW_DEFECTS[defect]
    check_gate_fails(run_raw, plant, expected, fragments, tmp_path)


# --- validate_splits fails on each planted defect -------------------------------------------


def unknown_split_label(data):
    splits = data["splits"]
    splits.loc[splits["artist"] == "artist5", "split"] = "holdout"  # a whole val artist


def artist_in_two_splits(data):
    data["splits"].loc[0, "split"] = "test"  # one of artist0's four train pairs


def duplicate_track_same_split(data):
    data["splits"].loc[1, "track_id"] = 1  # rows 0 and 1 are both artist0, train


def track_in_two_splits(data):
    data["splits"].loc[28, "track_id"] = 1  # row 28 is artist7, test; track 1 is in train


def artwork_in_two_splits(data):
    data["splits"].loc[28, "artwork_id"] = "a0-0.jpg"


def dangling_artwork_id(data):
    data["splits"].loc[5, "artwork_id"] = "ghost.jpg"


def dangling_track_id(data):
    data["splits"].loc[6, "track_id"] = 99999


def too_few_test_pairs(data):
    splits = data["splits"]
    data["splits"] = splits.drop(index=splits.index[splits["split"] == "test"][0])


def missing_split_column(data):
    data["splits"] = data["splits"].drop(columns="split")


SPLIT_DEFECTS = {
    "unknown split label": (
        unknown_split_label,
        {("splits", IN_SET, "split")},
        ["splits.split", "expect values in ['test', 'train', 'val']", "'holdout'"],
    ),
    "artist in two splits": (
        artist_in_two_splits,
        {("splits.artist_splits", BETWEEN, "n_splits")},
        [
            "splits.artist_splits.n_splits",
            "1 of 8 rows",
            "artist 'artist0' is in 2 splits: test, train",
        ],
    ),
    "duplicate track": (
        duplicate_track_same_split,
        {("splits", UNIQUE, "track_id")},
        [
            "splits.track_id",
            "expect values to be unique",
            "[1, 1] (artwork_id: ['a0-0.jpg', 'a0-1.jpg'])",
        ],
    ),
    "track in two splits": (
        track_in_two_splits,
        {("splits", UNIQUE, "track_id"), ("splits.track_splits", BETWEEN, "n_splits")},
        ["splits.track_splits.n_splits", "track_id 1 is in 2 splits: test, train"],
    ),
    "artwork in two splits": (
        artwork_in_two_splits,
        {("splits", UNIQUE, "artwork_id"), ("splits.artwork_splits", BETWEEN, "n_splits")},
        ["splits.artwork_splits.n_splits", "artwork_id 'a0-0.jpg' is in 2 splits: test, train"],
    ),
    "dangling artwork id": (
        dangling_artwork_id,
        {("splits.artwork_id_refs", IN_SET, "in_manifest")},
        [
            "splits.artwork_id_refs.in_manifest",
            "artwork_id 'ghost.jpg' is not in the artworks manifest",
        ],
    ),
    "dangling track id": (
        dangling_track_id,
        {("splits.track_id_refs", IN_SET, "in_manifest")},
        ["splits.track_id_refs.in_manifest", "track_id 99999 is not in the tracks manifest"],
    ),
    "too few test pairs": (
        too_few_test_pairs,
        {("splits.split_counts", A_AT_LEAST_B, "pairs")},
        ["splits.split_counts.pairs", "test: 7 pairs, at least 8 required"],
    ),
    "missing split column": (
        missing_split_column,
        {
            ("splits", COLUMNS, None),
            ("splits", OF_TYPE, "split"),
            ("splits", NOT_NULL, "split"),
            ("splits", IN_SET, "split"),
            ("splits.split_counts", A_AT_LEAST_B, "pairs"),
        },
        [
            "missing ['split']",
            "3 expectations could not run on the missing columns ['split']",
            "train: 0 pairs, at least 12 required",
        ],
    ),
}


@pytest.mark.parametrize("defect", SPLIT_DEFECTS)
def test_validate_splits_fails_on_planted_defect(defect, tmp_path):
    plant, expected, fragments = SPLIT_DEFECTS[defect]
    check_gate_fails(run_splits, plant, expected, fragments, tmp_path)


def check_gate_fails(
    run: Callable[[dict[str, pd.DataFrame]], GateReport],
    plant: Callable[[dict[str, pd.DataFrame]], None],
    expected: set[tuple[str, str, str | None]],
    fragments: list[str],
    tmp_path: Path,
) -> None:
    """Plant one defect in good data: exactly the expected expectations fail, the summary names
    them, and enforce() writes the full results and raises GateFailed with the summary."""
    data = good_data()
    plant(data)
    report = run(data)

    assert not report.success
    assert failed_expectations(report) == expected, report.summary
    for table, _, column in expected:
        label = f"{table}.{column}" if column else table
        missing = f"could not run on the missing columns ['{column}']"
        assert label in report.summary or missing in report.summary, report.summary
    for fragment in fragments:
        assert fragment in report.summary, report.summary

    path = tmp_path / f"{report.name}.json"
    with pytest.raises(GateFailed) as raised:
        enforce(report, path)
    assert raised.value.report is report
    assert str(raised.value) == report.summary
    assert report.summary.startswith(
        f"{report.name}: FAILED {len(expected)} of "
    ) and f"(full results: {path})" in report.summary.splitlines()[0]

    written = read_json(path)
    assert written == {**json.loads(json.dumps(report.result)), "summary": report.summary}
    assert written["summary"] == str(raised.value)  # the report keeps the summary the stage prints
    assert written["success"] is False
    assert written["statistics"]["unsuccessful_expectations"] == len(expected)
    every = sum(len(suite["results"]) for suite in written["suites"].values())
    assert written["statistics"]["evaluated_expectations"] == every  # passes are kept too


# --- no import-time side effects ------------------------------------------------------------


def test_importing_the_gates_does_not_import_great_expectations():
    code = (
        "import sys, art2mus.quality\n"
        "assert 'great_expectations' not in sys.modules, 'imported at import time'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
