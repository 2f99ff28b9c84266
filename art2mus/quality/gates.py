"""The data-quality gates: `validate_raw` on the ingest manifests, `validate_splits` on splits."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pandas as pd

from art2mus.config import ValidateRawParams, ValidateSplitsParams
from art2mus.data.schema import (
    ARTWORK_COLUMNS,
    QUARANTINE_COLUMNS,
    SPLIT_COLUMNS,
    SPLIT_NAMES,
    TRACK_COLUMNS,
)
from art2mus.quality.report import (
    GateReport,
    GateRun,
    TableCheck,
    enforce,
    results_path,
)
from art2mus.quality.validation import build_gate_report, expectations_module

SHA256_REGEX = r"^[0-9a-f]{64}$"
QUARANTINE_SOURCES = ("artgraph", "fma")
CHANNELS = [1, 2]

# Columns whose type the gates check (the ones they reason about); free text is left alone.
ARTWORK_TYPED = [
    "artwork_id", "path", "sha256", "artist", "style", "mode", "bytes", "width", "height"
]
TRACK_TYPED = [
    "track_id", "path", "sha256", "license", "bytes", "duration", "sample_rate", "channels"
]
SPLIT_TYPED = ["artwork_id", "track_id", "artist", "split"]

# Schema dtype -> the GX type names that satisfy it. String columns are checked with
# ExpectColumnValuesToBeOfType("str"): ExpectColumnValuesToBeInTypeList never matches pandas 3's
# default `str` dtype (it compares the dtype object, StringDtype(na_value=nan), to numpy types).
NUMERIC_TYPE_NAMES = {
    "int64": ["int64", "Int64Dtype"],
    "float64": ["float64", "Float64Dtype"],
}

# How a gate stage opens its tracking run: art2mus.stages.OpenRun (the library does not import the stages).
OpenGateRun = Callable[..., AbstractContextManager[GateRun]]


def gate_stage(
    gate: str,
    params: ValidateRawParams | ValidateSplitsParams,
    experiment: str,
    open_run: OpenGateRun,
    check: Callable[[], GateReport],
) -> GateReport:
    """A gate stage's body: in its tracking run, check, write and log `data/reports/<gate>.json`, enforce."""
    with open_run(gate, params, experiment) as tracked:
        return enforce(check(), results_path(Path("."), gate), tracked)


# --- expectation builders -------------------------------------------------------------------


def schema_expectations(columns: dict[str, str], typed: list[str], table: str) -> list[Any]:
    """The required columns are present (extra ones allowed), and the typed ones have their type."""
    gxe = expectations_module()
    expectations: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(columns),
            exact_match=False,
            description=f"expect the {table} columns of art2mus.data.schema",
        )
    ]
    for column in typed:
        dtype = columns[column]
        if dtype == "string":
            expectations.append(gxe.ExpectColumnValuesToBeOfType(column=column, type_="str"))
        else:
            expectations.append(
                gxe.ExpectColumnValuesToBeInTypeList(
                    column=column, type_list=NUMERIC_TYPE_NAMES[dtype]
                )
            )
    return expectations


def not_null_expectations(columns: list[str]) -> list[Any]:
    gxe = expectations_module()
    return [gxe.ExpectColumnValuesToNotBeNull(column=column) for column in columns]


def unique_expectations(columns: list[str]) -> list[Any]:
    gxe = expectations_module()
    return [gxe.ExpectColumnValuesToBeUnique(column=column) for column in columns]


def row_count_expectation(minimum: int, what: str) -> Any:
    gxe = expectations_module()
    return gxe.ExpectTableRowCountToBeBetween(
        min_value=minimum, description=f"expect at least {minimum} {what}"
    )


def key_values(frame: pd.DataFrame, column: str) -> list[Any]:
    """Distinct non-null values of a column as plain Python objects (JSON-serialisable)."""
    if column not in frame.columns:
        return []
    return frame[column].dropna().unique().tolist()


# --- validate_raw ---------------------------------------------------------------------------


def image_side_expectations(max_side: int) -> list[Any]:
    gxe = expectations_module()
    return [
        gxe.ExpectColumnValuesToBeBetween(column=side, min_value=1, max_value=max_side)
        for side in ("width", "height")
    ]


def artwork_check(artworks: pd.DataFrame, params: ValidateRawParams) -> TableCheck:
    """Schema, nulls, uniqueness, image sizes and modes, hashes and count of the artworks."""
    gxe = expectations_module()
    expectations = [
        *schema_expectations(ARTWORK_COLUMNS, ARTWORK_TYPED, "artworks"),
        *not_null_expectations(["artwork_id", "path", "sha256", "artist", "style"]),
        *unique_expectations(["artwork_id", "path"]),
        *image_side_expectations(params.max_image_side),
        gxe.ExpectColumnValuesToBeBetween(column="bytes", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=list(params.image_modes)),
        gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=SHA256_REGEX),
        row_count_expectation(params.min_artworks, "artworks"),
    ]
    return TableCheck("artworks", artworks, expectations, key="artwork_id")


def track_check(tracks: pd.DataFrame, params: ValidateRawParams) -> TableCheck:
    """Schema, nulls, uniqueness, durations, audio format, hashes and count of the tracks."""
    gxe = expectations_module()
    expectations = [
        *schema_expectations(TRACK_COLUMNS, TRACK_TYPED, "tracks"),
        *not_null_expectations(["track_id", "path", "sha256", "license"]),
        *unique_expectations(["track_id", "path"]),
        gxe.ExpectColumnValuesToBeBetween(
            column="duration",
            min_value=params.track_seconds.min,
            max_value=params.track_seconds.max,
        ),
        gxe.ExpectColumnValuesToBeBetween(column="bytes", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=CHANNELS),
        gxe.ExpectColumnValuesToBeInSet(column="sample_rate", value_set=list(params.sample_rates)),
        gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=SHA256_REGEX),
        row_count_expectation(params.min_tracks, "tracks"),
    ]
    return TableCheck("tracks", tracks, expectations, key="track_id")


def quarantine_check(quarantine: pd.DataFrame) -> TableCheck:
    """The quarantine list itself: schema, a known source and a reason for every entry."""
    gxe = expectations_module()
    expectations = [
        *schema_expectations(QUARANTINE_COLUMNS, ["source", "reason"], "quarantine"),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=list(QUARANTINE_SOURCES)),
        *not_null_expectations(["source", "reason"]),
    ]
    return TableCheck("quarantine", quarantine, expectations, key="path")


def quarantine_by_source(
    artworks: pd.DataFrame, tracks: pd.DataFrame, quarantine: pd.DataFrame
) -> pd.DataFrame:
    """One row per source: files kept, quarantined, and the quarantined share of all its files."""
    kept = {"artgraph": len(artworks), "fma": len(tracks)}
    if "source" in quarantine.columns:
        quarantined = quarantine["source"].value_counts()
    else:
        quarantined = pd.Series(dtype="int64")
    rows = []
    for source in QUARANTINE_SOURCES:
        n_quarantined = int(quarantined.get(source, 0))
        total = kept[source] + n_quarantined
        ratio = n_quarantined / total if total else 0.0
        rows.append(
            {
                "source": source,
                "kept": kept[source],
                "quarantined": n_quarantined,
                "total": total,
                "ratio": ratio,
            }
        )
    return pd.DataFrame(rows)


def quarantine_ratio_check(by_source: pd.DataFrame, params: ValidateRawParams) -> TableCheck:
    """Each source's quarantined share stays under params.max_quarantine_ratio."""
    gxe = expectations_module()
    allowed = params.max_quarantine_ratio
    expectation = gxe.ExpectColumnValuesToBeBetween(
        column="ratio",
        min_value=0.0,
        max_value=allowed,
        description=f"expect at most {allowed:.1%} of each source's files quarantined",
    )

    def describe(row: pd.Series) -> str:
        return (
            f"{row['source']}: {row['quarantined']} of {row['total']} files quarantined "
            f"({row['ratio']:.1%}) > {allowed:.1%} allowed"
        )

    return TableCheck("quarantine.by_source", by_source, [expectation], "source", describe)


def validate_raw(
    artworks: pd.DataFrame,
    tracks: pd.DataFrame,
    quarantine: pd.DataFrame,
    params: ValidateRawParams,
) -> GateReport:
    """Gate on the ingest manifests: schema, nulls, uniqueness, ranges, counts, quarantine share."""
    checks = [
        artwork_check(artworks, params),
        track_check(tracks, params),
        quarantine_check(quarantine),
        quarantine_ratio_check(quarantine_by_source(artworks, tracks, quarantine), params),
    ]
    return build_gate_report("validate_raw", checks)


# --- validate_splits ------------------------------------------------------------------------


def split_rows_check(splits: pd.DataFrame) -> TableCheck:
    """Schema, labels and one-to-one pairs of the splits table."""
    gxe = expectations_module()
    expectations = [
        *schema_expectations(SPLIT_COLUMNS, SPLIT_TYPED, "splits"),
        *not_null_expectations(["artwork_id", "track_id", "artist", "split"]),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLIT_NAMES)),
        *unique_expectations(["artwork_id", "track_id"]),
    ]
    return TableCheck("splits", splits, expectations, key="artwork_id")


def manifest_membership(splits: pd.DataFrame, manifest: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per split row: its `key` and whether the manifest holds that id."""
    if key not in splits.columns:
        return pd.DataFrame({key: [], "in_manifest": pd.Series(dtype="bool")})
    known = pd.Index(key_values(manifest, key))
    ids = splits[key]
    in_manifest = ids.isin(known) | ids.isna()  # a null id is the not-null check's to report
    return pd.DataFrame({key: ids.to_numpy(), "in_manifest": in_manifest.to_numpy()})


def reference_check(
    splits: pd.DataFrame, manifest: pd.DataFrame, key: str, what: str
) -> TableCheck:
    """Every `key` in the splits names a row of the `what` manifest.

    GX re-serialises an expectation's kwargs (through pydantic v1) hundreds of times per run, so
    ExpectColumnValuesToBeInSet with 100k manifest ids as its value_set takes ~7 s and grows with
    the set; the membership is computed here and GX checks the flags (and the JSON stays small).
    """
    gxe = expectations_module()
    n_known = len(key_values(manifest, key))
    expectation = gxe.ExpectColumnValuesToBeInSet(
        column="in_manifest",
        value_set=[True],
        description=f"expect every {key} in the {what} manifest ({n_known} ids)",
    )

    def describe(row: pd.Series) -> str:
        return f"{key} {row[key]!r} is not in the {what} manifest"

    table = manifest_membership(splits, manifest, key)
    return TableCheck(f"splits.{key}_refs", table, [expectation], key, describe)


def splits_per_group(splits: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per value of `key`: how many distinct splits it appears in, and which."""
    if key not in splits.columns or "split" not in splits.columns:
        return pd.DataFrame({key: [], "n_splits": pd.Series(dtype="int64"), "splits": []})
    known = splits.dropna(subset=[key, "split"])
    n_splits = known.groupby(key, sort=True)["split"].nunique()
    table = pd.DataFrame({key: n_splits.index, "n_splits": n_splits.to_numpy()})
    shared = known[known[key].isin(n_splits.index[n_splits > 1])]
    names = shared.groupby(key)["split"].agg(joined_labels)
    names_by_key = names.to_dict()
    table["splits"] = [names_by_key.get(value, "") for value in table[key]]
    return table


def joined_labels(labels: pd.Series) -> str:
    """'test, train' for a group seen in two splits."""
    return ", ".join(sorted({str(label) for label in labels}))


def disjointness_check(splits: pd.DataFrame, key: str, what: str) -> TableCheck:
    """Every `key` (artist, artwork, track) sits in exactly one split."""
    gxe = expectations_module()
    expectation = gxe.ExpectColumnValuesToBeBetween(
        column="n_splits",
        min_value=1,
        max_value=1,
        description=f"expect each {what} in exactly one split",
    )

    def describe(row: pd.Series) -> str:
        return f"{key} {row[key]!r} is in {row['n_splits']} splits: {row['splits']}"

    table = splits_per_group(splits, key)
    return TableCheck(f"splits.{what}_splits", table, [expectation], key, describe)


def pairs_per_split(splits: pd.DataFrame, params: ValidateSplitsParams) -> pd.DataFrame:
    """One row per split name: its number of pairs and the minimum required."""
    if "split" in splits.columns:
        counts = splits["split"].value_counts()
    else:
        counts = pd.Series(dtype="int64")
    required = params.min_pairs_per_split.model_dump()
    return pd.DataFrame(
        {
            "split": list(SPLIT_NAMES),
            "pairs": [int(counts.get(name, 0)) for name in SPLIT_NAMES],
            "required": [int(required[name]) for name in SPLIT_NAMES],
        }
    )


def split_size_check(counts: pd.DataFrame) -> TableCheck:
    """Each split holds at least its required number of pairs."""
    gxe = expectations_module()
    expectation = gxe.ExpectColumnPairValuesAToBeGreaterThanB(
        column_A="pairs",
        column_B="required",
        or_equal=True,
        description="expect each split to hold at least its minimum number of pairs",
    )

    def describe(row: pd.Series) -> str:
        return f"{row['split']}: {row['pairs']} pairs, at least {row['required']} required"

    return TableCheck("splits.split_counts", counts, [expectation], "split", describe)


def validate_splits(
    splits: pd.DataFrame,
    artworks: pd.DataFrame,
    tracks: pd.DataFrame,
    params: ValidateSplitsParams,
) -> GateReport:
    """Gate on the splits: schema, labels, one-to-one, ids in manifests, disjointness, sizes."""
    checks = [
        split_rows_check(splits),
        reference_check(splits, artworks, "artwork_id", "artworks"),
        reference_check(splits, tracks, "track_id", "tracks"),
        disjointness_check(splits, "artist", "artist"),
        disjointness_check(splits, "artwork_id", "artwork"),
        disjointness_check(splits, "track_id", "track"),
        split_size_check(pairs_per_split(splits, params)),
    ]
    return build_gate_report("validate_splits", checks)
