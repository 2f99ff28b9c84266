"""Build small raw ArtGraph + FMA copies in their real layouts, and plant bad files in them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image

SAMPLE_RATE = 16000


def write_jpeg(path: Path, seed: int, size: int = 24) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, format="JPEG")


def write_mp3(path: Path, seed: int, seconds: float = 1.5) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 800) * t).astype("float32")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, SAMPLE_RATE, format="MP3")


def track_relpath(track_id: int) -> str:
    name = f"{track_id:06d}"
    return f"fma_large/{name[:3]}/{name}.mp3"


def write_tracks_csv(path: Path, rows: list[dict]) -> None:
    """FMA's tracks.csv: a (top level, field) two-row column header and a `track_id` index row."""
    columns = pd.MultiIndex.from_tuples(
        [("album", "title"), ("artist", "name"), ("set", "split"), ("set", "subset"),
         ("track", "duration"), ("track", "genre_top"), ("track", "genres"), ("track", "genres_all"),
         ("track", "license"), ("track", "title")]
    )
    frame = pd.DataFrame(
        [[r["album"], r["artist"], "training", r.get("subset", "large"), r["duration"], r["genre_top"],
          r["genres"], r["genres_all"], r["license"], r["title"]] for r in rows],
        columns=columns,
        index=pd.Index([r["track_id"] for r in rows], name="track_id"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path)


def track_row(track_id: int, i: int) -> dict:
    """One tracks.csv row in write_tracks_csv's form."""
    return {"track_id": track_id, "album": f"Album {i % 3}", "artist": f"Band {i % 5}", "duration": 2,
            "genre_top": "Rock", "genres": "[12]", "genres_all": "[12]",
            "license": "Attribution 4.0 International", "title": f"Song {i}"}


def make_raw_dataset(root: Path, n_artworks: int = 12, n_tracks: int = 12) -> tuple[Path, Path]:
    """A clean ArtGraph and FMA copy under `root`; returns (artgraph_dir, fma_dir)."""
    artgraph, fma = root / "artgraph", root / "fma"
    art_rows = []
    for i in range(n_artworks):
        name = f"painter-{i % 4}_work-{i}.jpg"
        write_jpeg(artgraph / "imagesf2" / name, seed=i)
        art_rows.append({"name": name, "title": f"Work {i}", "artist": f"Painter {i % 4}",
                         "style": ["Cubism", "Impressionism"][i % 2], "genre": "landscape",
                         "date": str(1900 + i), "emotion": "calm"})
    pd.DataFrame(art_rows).to_csv(artgraph / "artgraph.csv", index=False)
    track_rows = []
    for i in range(n_tracks):
        track_id = 1000 + 37 * i
        write_mp3(fma / track_relpath(track_id), seed=i)
        track_rows.append(track_row(track_id, i))
    write_tracks_csv(fma / "fma_metadata" / "tracks.csv", track_rows)
    pd.DataFrame({"genre_id": [12], "#tracks": [n_tracks], "parent": [0], "title": ["Rock"],
                  "top_level": [12]}).to_csv(fma / "fma_metadata" / "genres.csv", index=False)
    return artgraph, fma


def tree_digest(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under root with its size and content, symlinks by their target (to prove no change)."""
    digest = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            digest[str(path)] = (-1, str(path.readlink()).encode())
        elif path.is_file():
            digest[str(path)] = (path.stat().st_size, path.read_bytes())
    return digest
