"""Ingest: manifests from real layouts, and every bad-file kind quarantined with its reason."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from art2mus.config import IngestParams
from art2mus.data.ingest import ingest
from art2mus.data.schema import ARTWORK_COLUMNS, QUARANTINE_COLUMNS, TRACK_COLUMNS
from art2mus.data.sources import IngestError
from art2mus.io import UnreadableFile
from tests.corpus import (
    make_raw_dataset,
    track_relpath,
    track_row,
    tree_digest,
    write_jpeg,
    write_mp3,
    write_tracks_csv,
)

PARAMS = IngestParams(workers=1)


def read_manifests(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return tuple(pd.read_parquet(out / name) for name in ("artworks.parquet", "tracks.parquet", "quarantine.parquet"))


def test_clean_dataset_gives_full_manifests(tmp_path: Path) -> None:
    artgraph, fma = make_raw_dataset(tmp_path / "raw")
    summary = ingest(artgraph, fma, tmp_path / "out", PARAMS, quiet=True)
    artworks, tracks, quarantine = read_manifests(tmp_path / "out")
    assert summary["artworks"] == len(artworks) == 12
    assert summary["tracks"] == len(tracks) == 12
    assert quarantine.empty
    assert list(artworks.columns[: len(ARTWORK_COLUMNS)]) == list(ARTWORK_COLUMNS)
    assert "emotion" in artworks.columns  # extra export columns are kept
    assert list(tracks.columns) == list(TRACK_COLUMNS)
    assert list(quarantine.columns) == list(QUARANTINE_COLUMNS)
    first = tracks.iloc[0]
    assert first["path"] == track_relpath(int(first["track_id"]))
    assert first["sample_rate"] == 16000 and first["channels"] == 1
    assert abs(first["duration"] - 1.5) < 0.1
    assert list(first["genres"]) == [12]
    assert first["license"] == "Attribution 4.0 International"
    assert artworks["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert (artworks[["width", "height"]] == 24).all().all()


def plant_hostile_corpus(root: Path) -> tuple[Path, Path, dict[str, str]]:
    """A dataset with one instance of every bad kind; returns (artgraph, fma, path -> expected reason)."""
    artgraph, fma = make_raw_dataset(root / "raw")
    images = artgraph / "imagesf2"
    csv = artgraph / "artgraph.csv"
    rows = pd.read_csv(csv, dtype=str)
    expected: dict[str, str] = {}

    (images / "painter-0_work-0.jpg").write_bytes(b"")
    expected["imagesf2/painter-0_work-0.jpg"] = "zero-byte file"
    (images / "painter-1_work-1.jpg").write_bytes(b"not an image, just text")
    expected["imagesf2/painter-1_work-1.jpg"] = "not an image (starts with b'not an i')"
    data = (images / "painter-2_work-2.jpg").read_bytes()
    (images / "painter-2_work-2.jpg").write_bytes(data[: len(data) // 2])
    expected["imagesf2/painter-2_work-2.jpg"] = "corrupt or truncated image"

    outside = root / "outside.jpg"
    write_jpeg(outside, seed=99)
    (images / "link.jpg").symlink_to(outside)
    expected["imagesf2/link.jpg"] = "symlink escapes the source root"
    write_jpeg(images / "orphan.jpg", seed=98)
    expected["imagesf2/orphan.jpg"] = "file has no metadata row"
    bad_name = os.fsdecode(b"bad\xffname.jpg")
    write_jpeg(images / bad_name, seed=97)
    expected["imagesf2/bad\\xffname.jpg"] = "file has no metadata row"

    extra = [
        {"name": "ghost.jpg"},  # metadata without file
        {"name": "../../outside.jpg"},  # escapes with ..
        {"name": "/etc/hostname"},  # absolute
        {"name": "link.jpg"},  # symlink out
        {"name": "painter-3_work-3.jpg"},  # duplicate of an existing row
    ]
    for row in extra:
        rows.loc[len(rows)] = {**rows.iloc[4].to_dict(), **row}
    expected["imagesf2/ghost.jpg"] = "no file at imagesf2/ghost.jpg"
    expected["../../outside.jpg"] = "path escapes the source root"
    expected["/etc/hostname"] = "absolute path escapes the source root"
    expected["imagesf2/painter-3_work-3.jpg"] = "duplicate id: 2 rows name this image"
    text = rows.to_csv(index=False).encode("utf-8")
    # A row with Latin-1 bytes: the file is not valid UTF-8 there (and only there).
    latin = "painter-0_work-5.jpg,Caf\xe9 au lait,Painter 0,Cubism,landscape,1905,calm\n".encode("latin-1")
    write_jpeg(images / "painter-0_work-5.jpg", seed=96)
    csv.write_bytes(text + latin)
    expected["imagesf2/painter-0_work-5.jpg"] = "not valid UTF-8"

    tracks_csv = fma / "fma_metadata" / "tracks.csv"
    tracks = pd.read_csv(tracks_csv, index_col=0, header=[0, 1], dtype=str, keep_default_na=False)
    ids = [int(i) for i in tracks.index]
    mp3 = lambda i: fma / track_relpath(ids[i])  # noqa: E731
    data = mp3(0).read_bytes()
    mp3(0).write_bytes(data[: len(data) // 3])
    expected[track_relpath(ids[0])] = "truncated: decoded"
    mp3(1).write_bytes(b"")
    expected[track_relpath(ids[1])] = "zero-byte file"
    import numpy as np
    import soundfile as sf

    sf.write(mp3(2), np.zeros(16000, dtype="float32"), 16000, format="WAV")
    expected[track_relpath(ids[2])] = "wrong type: WAV data in a .mp3 file"
    mp3(3).write_bytes(b"ID3 but then garbage " * 10)
    expected[track_relpath(ids[3])] = "not decodable audio"
    write_mp3(fma / track_relpath(424242), seed=5)
    expected[track_relpath(424242)] = "file has no metadata row"
    (fma / "fma_large" / "README.txt").write_text("FMA ships this; it is not a track")

    new_rows = [track_row(track_id, i) for i, track_id in enumerate(ids)]
    base = track_row(0, 0)
    new_rows[4] = {**new_rows[4], "license": ""}
    expected[track_relpath(ids[4])] = "no licence in tracks.csv"
    new_rows[5] = {**new_rows[5], "genres": "[12, 'rock'"}
    expected[track_relpath(ids[5])] = "unreadable genre list"
    new_rows.append({**base, "track_id": 777777})  # row without a file
    expected[track_relpath(777777)] = f"no file at {track_relpath(777777)}"
    new_rows.append({**base, "track_id": ids[6]})  # duplicate id
    expected[track_relpath(ids[6])] = "duplicate id: 2 rows of tracks.csv share it"
    write_tracks_csv(tracks_csv, new_rows)
    return artgraph, fma, expected


def test_every_bad_kind_is_quarantined_with_its_reason(tmp_path: Path) -> None:
    artgraph, fma, expected = plant_hostile_corpus(tmp_path)
    before = tree_digest(tmp_path / "raw")
    summary = ingest(artgraph, fma, tmp_path / "out", PARAMS, quiet=True)
    artworks, tracks, quarantine = read_manifests(tmp_path / "out")

    assert tree_digest(tmp_path / "raw") == before, "raw data must never be modified"
    reasons = {}
    for row in quarantine.itertuples():
        reasons.setdefault(row.path, []).append(row.reason)
    for path, reason in expected.items():
        assert path in reasons, f"{path} not quarantined; quarantine: {reasons}"
        assert any(reason in r for r in reasons[path]), f"{path}: {reasons[path]} lacks {reason!r}"
    assert "fma_large/README.txt" not in reasons  # FMA's own non-track files are not errors
    # The good items are all still there, and nothing bad slipped into the manifests.
    assert len(artworks) == 12 - 4  # 12 clean minus zero-byte, text, truncated, duplicate
    assert len(tracks) == 12 - 7  # minus truncated, zero, wav, garbage, no licence, bad genres, duplicate
    assert not set(artworks["path"]) & set(expected)
    assert not set(tracks["path"]) & set(expected)
    assert summary["quarantined_artworks"] + summary["quarantined_tracks"] == len(quarantine)
    # Duplicates: every row sharing an id is set aside, not just the later ones.
    assert len(reasons["imagesf2/painter-3_work-3.jpg"]) == 2


def test_missing_required_columns_is_fatal_and_names_them(tmp_path: Path) -> None:
    artgraph, fma = make_raw_dataset(tmp_path / "raw", 4, 4)
    rows = pd.read_csv(artgraph / "artgraph.csv").drop(columns=["style", "date"])
    rows.to_csv(artgraph / "artgraph.csv", index=False)
    with pytest.raises(IngestError, match=r"missing required column\(s\) 'style', 'date'"):
        ingest(artgraph, fma, tmp_path / "out", PARAMS, quiet=True)
    assert not (tmp_path / "out" / "artworks.parquet").exists()


def test_column_names_are_mappable(tmp_path: Path) -> None:
    artgraph, fma = make_raw_dataset(tmp_path / "raw", 4, 4)
    rows = pd.read_csv(artgraph / "artgraph.csv").rename(columns={"name": "image", "artist": "author"})
    rows.to_csv(artgraph / "artgraph.csv", index=False)
    params = PARAMS.model_validate(
        {**PARAMS.model_dump(), "artgraph": {"columns": {"name": "image", "artist": "author"}}}
    )
    ingest(artgraph, fma, tmp_path / "out", params, quiet=True)
    artworks, _, _ = read_manifests(tmp_path / "out")
    assert len(artworks) == 4 and artworks["artist"].str.startswith("Painter").all()


def test_fma_subset_selects_rows_of_that_folder(tmp_path: Path) -> None:
    artgraph, fma = make_raw_dataset(tmp_path / "raw", 4, 6)
    tracks_csv = fma / "fma_metadata" / "tracks.csv"
    tracks = pd.read_csv(tracks_csv, index_col=0, header=[0, 1])
    tracks[("set", "subset")] = ["small", "small", "medium", "large", "large", "large"]
    tracks.to_csv(tracks_csv)
    shutil.copytree(fma / "fma_large", fma / "fma_small")
    for path in sorted((fma / "fma_small").rglob("*.mp3"))[2:]:
        path.unlink()
    params = PARAMS.model_validate({**PARAMS.model_dump(), "fma": {"size": "small"}})
    ingest(artgraph, fma, tmp_path / "out", params, quiet=True)
    _, manifest, quarantine = read_manifests(tmp_path / "out")
    assert len(manifest) == 2 and manifest["path"].str.startswith("fma_small/").all()
    assert quarantine.empty  # rows of the larger subsets are out of scope, not missing files


def test_second_run_does_no_decoding_and_a_new_file_costs_one(tmp_path: Path) -> None:
    artgraph, fma = make_raw_dataset(tmp_path / "raw", 8, 8)
    first = ingest(artgraph, fma, tmp_path / "out", PARAMS, quiet=True)
    assert first["files_decoded"] == 16
    second = ingest(artgraph, fma, tmp_path / "out", PARAMS, quiet=True)
    assert second["files_hashed"] == 0 and second["files_decoded"] == 0
    write_jpeg(artgraph / "imagesf2" / "new.jpg", seed=123)
    rows = pd.read_csv(artgraph / "artgraph.csv")
    rows.loc[len(rows)] = {**rows.iloc[0].to_dict(), "name": "new.jpg"}
    rows.to_csv(artgraph / "artgraph.csv", index=False)
    third = ingest(artgraph, fma, tmp_path / "out", PARAMS, quiet=True)
    assert third["files_hashed"] == 1 and third["files_decoded"] == 1
    assert third["artworks"] == 9


def test_parallel_decoding_gives_the_same_manifests(tmp_path: Path) -> None:
    artgraph, fma = make_raw_dataset(tmp_path / "raw", 70, 70)
    ingest(artgraph, fma, tmp_path / "serial", PARAMS, quiet=True)
    ingest(artgraph, fma, tmp_path / "parallel", PARAMS.model_copy(update={"workers": 2}), quiet=True)
    for serial, parallel in zip(read_manifests(tmp_path / "serial"), read_manifests(tmp_path / "parallel")):
        pd.testing.assert_frame_equal(serial, parallel)


def test_a_crash_while_writing_leaves_the_old_manifests(tmp_path: Path, monkeypatch) -> None:
    artgraph, fma = make_raw_dataset(tmp_path / "raw", 4, 4)
    out = tmp_path / "out"
    ingest(artgraph, fma, out, PARAMS, quiet=True)
    before = {p.name: p.read_bytes() for p in out.glob("*.parquet")}
    write_jpeg(artgraph / "imagesf2" / "painter-0_work-0.jpg", seed=1234)  # content changes

    def crash(self, path, **kwargs):
        Path(path).write_bytes(b"half a parquet")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    with pytest.raises(OSError, match="disk full"):
        ingest(artgraph, fma, out, PARAMS, quiet=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_tracks_too_short_for_the_models_crop_are_quarantined_with_the_reason(tmp_path: Path) -> None:
    artgraph, fma = make_raw_dataset(tmp_path / "raw")  # 1.5 s tracks
    summary = ingest(artgraph, fma, tmp_path / "out", PARAMS, quiet=True, min_track_seconds=20.24)
    _, tracks, quarantine = read_manifests(tmp_path / "out")
    assert tracks.empty and summary["quarantined_tracks"] == len(quarantine) == 12
    assert quarantine["reason"].str.fullmatch(
        r"too short for the model's crop: 1\.50 s < 20\.24 s \(audio\.crop_offset_seconds \+ audio\.crop_seconds\)"
    ).all()
    ingest(artgraph, fma, tmp_path / "kept", PARAMS, quiet=True, min_track_seconds=1.0)
    assert len(read_manifests(tmp_path / "kept")[1]) == 12


def test_an_export_whose_only_csv_has_another_name_is_read_and_said(tmp_path: Path, caplog) -> None:
    artgraph, fma = make_raw_dataset(tmp_path / "raw", 4, 4)
    (artgraph / "artgraph.csv").rename(artgraph / "artgraph-export-2024.csv")
    with caplog.at_level("INFO", logger="art2mus"):
        summary = ingest(artgraph, fma, tmp_path / "out", PARAMS, quiet=True)
    assert summary["artworks"] == 4
    assert any("artgraph.csv not found" in record.getMessage() and "artgraph-export-2024.csv" in record.getMessage()
               for record in caplog.records)


def test_cli_reads_the_metadata_file_it_is_given_and_names_the_choices(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from art2mus.cli.main import app

    artgraph, fma = make_raw_dataset(tmp_path / "raw", 4, 4)
    (artgraph / "artgraph.csv").rename(artgraph / "export.csv")
    (artgraph / "styles.csv").write_text("style\nBaroque\n")
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    command = ["ingest", "--artgraph", str(artgraph), "--fma", str(fma), "--out", str(tmp_path / "out"),
               "--workers", "1", "--params", str(params), "--quiet"]
    two = CliRunner().invoke(app, command)
    assert two.exit_code == 1 and isinstance(two.exception, SystemExit) and "Traceback" not in two.output
    assert f"{artgraph / 'artgraph.csv'}: metadata file not found" in two.output
    assert "'export.csv', 'styles.csv'" in two.output and "--artgraph-metadata" in two.output
    missing = CliRunner().invoke(app, [*command, "--artgraph-metadata", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1 and f"{tmp_path / 'nope.csv'}: metadata file not found" in missing.output
    given = CliRunner().invoke(app, [*command, "--artgraph-metadata", str(artgraph / "export.csv")])
    assert given.exit_code == 0, given.output
    assert "ingest: 4 artworks" in given.output and len(pd.read_parquet(tmp_path / "out" / "artworks.parquet")) == 4


@pytest.mark.parametrize("cut", ["short_record", "open_quote"])
def test_a_metadata_csv_cut_mid_record_is_refused_naming_it(tmp_path: Path, cut: str) -> None:
    artgraph, fma = make_raw_dataset(tmp_path / "raw")
    tracks_csv = fma / "fma_metadata" / "tracks.csv"
    text = tracks_csv.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    cut_text = text.rstrip("\n")[: -len(last)] + (last.split(",", 1)[0] + "," if cut == "short_record" else last + ',"Jazz')
    tracks_csv.write_text(cut_text)
    refused = r"tracks\.csv: unreadable, truncated or corrupt \((its last line has|it ends inside)"
    with pytest.raises(UnreadableFile, match=refused):
        ingest(artgraph, fma, tmp_path / "out", PARAMS, quiet=True)
    assert not list((tmp_path / "out").glob("*.parquet"))  # no manifest from a shortened file
