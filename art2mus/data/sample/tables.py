"""The sample's CSVs: artgraph.csv, FMA's tracks.csv and genres.csv, the pairs and the ground-truth factors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from art2mus.data.sample.artworks import ARTGRAPH_COLUMNS
from art2mus.data.sample.factors import COMPOSITION_STYLES, FACTORS
from art2mus.data.sample.fma_metadata import fma_genres_table, fma_tracks_table


def factors_table(artworks: pd.DataFrame, tracks: pd.DataFrame) -> pd.DataFrame:
    """Ground truth per track: factor levels, their renderings, labels and every nuisance."""
    music_columns = ["register", "tonic_midi", "notes_per_second", "timbre", "genre_top"]
    audio_nuisances = ["tempo_jitter", "detune_cents", "start_offset", "peak", "noise_floor"]
    image_nuisances = [column for column in artworks.columns if column.startswith("image_")]
    # Extra tracks have no artwork: their artwork columns stay empty.
    paintings = artworks[["name", "artist", *image_nuisances, "grain", "shape_kind"]].reindex(tracks.index)
    paintings = paintings.rename(
        columns={"name": "artwork_id", "grain": "image_grain", "shape_kind": "image_shape_kind"}
    )
    paintings["image_shapes"] = paintings["image_shapes"].astype("Int64")
    table = pd.concat([
        paintings[["artwork_id"]],
        tracks[["track_id"]],
        pd.DataFrame({"kind": np.where(tracks["paired"], "pair", "extra_track")}, index=tracks.index),
        paintings[["artist"]],
        tracks[["music_artist", *FACTORS, *music_columns]],
        pd.DataFrame({"style": tracks["composition"].map(COMPOSITION_STYLES)}, index=tracks.index),
        paintings.drop(columns=["artwork_id", "artist"]),
        tracks[["melody_contour"]],
        tracks[audio_nuisances].add_prefix("audio_"),
    ], axis=1)
    return table.round(4)


def write_tables(
    root: Path, artworks: pd.DataFrame, tracks: pd.DataFrame, seconds: float, sizes: list[int]
) -> None:
    """artgraph.csv, FMA's tracks.csv and genres.csv, the pairs and the ground-truth factors."""
    artgraph = artworks.sort_values("name")[ARTGRAPH_COLUMNS]
    artgraph.to_csv(root / "artgraph" / "artgraph.csv", index=False, encoding="utf-8")
    metadata_dir = root / "fma" / "fma_metadata"
    metadata_dir.mkdir(parents=True)
    fma_tracks_table(tracks, seconds, sizes).to_csv(metadata_dir / "tracks.csv", encoding="utf-8")
    fma_genres_table(tracks).to_csv(metadata_dir / "genres.csv", index=False, encoding="utf-8")
    paired_tracks = tracks.loc[tracks["paired"], "track_id"]  # same order as the artworks
    pairs = pd.DataFrame({"artwork_id": artworks["name"].to_numpy(), "track_id": paired_tracks.to_numpy()})
    pairs.sort_values("artwork_id").to_csv(root / "artsound_pairs.csv", index=False, encoding="utf-8")
    factors = factors_table(artworks, tracks)
    factors = pd.concat([
        factors[factors["kind"] == "pair"].sort_values("artwork_id"),
        factors[factors["kind"] == "extra_track"].sort_values("track_id"),
    ])
    factors.to_csv(root / "factors.csv", index=False, encoding="utf-8")
