"""The sample's FMA side: genre tree, licences, music artists and albums, the file layout and tables."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from art2mus.data.sample.factors import weighted_choice, zipf_counts

# ---- FMA: real genre ids, licences and layout ---------------------------------------------------
# genre_id -> (parent, title); the three top levels the timbres map to and some of their children.
FMA_GENRES = {
    5: (0, "Classical"),
    12: (0, "Rock"),
    15: (0, "Electronic"),
    25: (12, "Punk"),
    26: (12, "Post-Rock"),
    27: (12, "Lo-Fi"),
    42: (15, "Ambient Electronic"),
    45: (12, "Loud-Rock"),
    53: (45, "Noise-Rock"),
    58: (12, "Psych-Rock"),
    66: (12, "Indie-Rock"),
    181: (15, "Techno"),
    183: (15, "Glitch"),
    184: (15, "Minimal Electronic"),
    187: (5, "20th Century Classical"),
    236: (15, "IDM"),
    240: (297, "Chiptune"),
    297: (15, "Chip Music"),
    322: (5, "Composed Music"),
    442: (5, "Chamber Music"),
    444: (5, "Symphony"),
    659: (5, "Contemporary Classical"),
}
FMA_LICENSES = {  # licence -> share of tracks (skewed, like FMA)
    "Attribution-Noncommercial-Share Alike 3.0 United States": 0.28,
    "Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International": 0.20,
    "Attribution-NonCommercial-ShareAlike 3.0 International": 0.14,
    "Attribution-Noncommercial-No Derivative Works 3.0 United States": 0.12,
    "Attribution 4.0 International": 0.08,
    "Creative Commons Attribution-NonCommercial-NoDerivatives 4.0": 0.06,
    "Attribution-ShareAlike": 0.05,
    "Attribution-NonCommercial 3.0 International": 0.04,
    "Public Domain Mark 1.0": 0.02,
    "CC0 1.0 Universal": 0.01,
}
FMA_SUBSETS = {"small": 0.1, "medium": 0.2, "large": 0.7}  # smallest subset holding the track
FMA_SPLITS = {"training": 0.8, "validation": 0.1, "test": 0.1}
FMA_MAX_TRACK_ID = 155000
FMA_FIRST_DATE = datetime(2008, 11, 26)
FMA_LAST_DATE = datetime(2017, 3, 30)
TRACKS_PER_MUSIC_ARTIST = 6  # FMA: ~106k tracks by ~16k artists

BAND_WORDS = [
    "Paper", "Velvet", "Northern", "Silver", "Hollow", "Copper", "Static", "Quiet", "Wild",
    "Lunar", "Señor", "Night",
]
BAND_NOUNS = [
    "Lanterns", "Harbour", "Machines", "Orchard", "Satellites", "Foxes", "Echoes", "Parade",
    "Tides", "Engines", "Gardens", "Radio",
]
TRACK_WORDS = [
    "Drift", "Signal", "Morning", "Glass", "Orbit", "Ember", "Fold", "Circuit", "Lull", "Spiral",
    "Harbour", "Static", "Bloom", "Tide", "Pulse", "Thread",
]
MUSIC_TAGS = ["experimental", "instrumental", "lo-fi", "ambient", "live", "demo"]
LOCATIONS = ["Brooklyn, NY", "Berlin", "Montréal", "London, UK", "Austin, TX", "Lisbon", "Tokyo"]


def fma_ancestors(genre_id: int) -> list[int]:
    """The genre and every parent up to its top level."""
    chain = [genre_id]
    while FMA_GENRES[chain[-1]][0] != 0:
        chain.append(FMA_GENRES[chain[-1]][0])
    return chain


def fma_top_level(genre_id: int) -> int:
    """The top-level genre a genre belongs to."""
    return fma_ancestors(genre_id)[-1]


def numbered_names(pool: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """n distinct names from a pool in random order, numbered once the pool runs out."""
    order = rng.permutation(len(pool))
    names = [pool[order[i % len(pool)]] for i in range(n)]
    return [name + (f" {i // len(pool) + 1}" if i >= len(pool) else "") for i, name in enumerate(names)]


def plan_albums(artist_of_track: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each artist's tracks in albums of up to four: album index and track number per track."""
    album_of_track = np.zeros(len(artist_of_track), dtype=int)
    number = np.zeros(len(artist_of_track), dtype=int)
    n_albums = 0
    for artist in np.unique(artist_of_track):
        members = np.flatnonzero(artist_of_track == artist)
        album_of_track[members] = n_albums + np.arange(len(members)) // 4
        number[members] = np.arange(len(members)) % 4 + 1
        n_albums += math.ceil(len(members) / 4)
    return album_of_track, number


def plan_genre_lists(genre_tops: pd.Series, rng: np.random.Generator) -> tuple[list, list]:
    """FMA `genres` (the top level, a sub-genre, or both) and `genres_all` (with every ancestor)."""
    genres, genres_all = [], []
    for genre_top in genre_tops:
        top_id = next(gid for gid, (parent, title) in FMA_GENRES.items() if (parent, title) == (0, genre_top))
        children = [gid for gid in FMA_GENRES if gid != top_id and fma_top_level(gid) == top_id]
        form = rng.integers(3)
        chosen = [top_id] if form == 0 else [int(rng.choice(children))]
        if form == 2:
            chosen = sorted({top_id, *chosen})
        genres.append(chosen)
        genres_all.append(sorted({ancestor for gid in chosen for ancestor in fma_ancestors(gid)}))
    return genres, genres_all


def two_word_titles(n: int, rng: np.random.Generator) -> list[str]:
    """Neutral album and track titles."""
    pairs = rng.integers(len(TRACK_WORDS), size=(n, 2))
    return [f"{TRACK_WORDS[a]} {TRACK_WORDS[b]}" if a != b else f"Untitled {a + 1}" for a, b in pairs]


def plan_fma_metadata(tracks: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """FMA-style artists, albums, genres, licences and counters, independent of the factors."""
    n = len(tracks)
    n_artists = max(3, round(n / TRACKS_PER_MUSIC_ARTIST))
    artist_of_track = rng.permutation(np.repeat(np.arange(n_artists), zipf_counts(n, n_artists, rng)))
    band_names = [f"{word} {noun}" for word in BAND_WORDS for noun in BAND_NOUNS]
    artist_names = numbered_names(band_names, n_artists, rng)
    artist_ids = rng.choice(np.arange(1, 25000), n_artists, replace=False)
    artist_locations = rng.choice(LOCATIONS + [""], n_artists)

    album_of_track, number = plan_albums(artist_of_track)
    n_albums = album_of_track.max() + 1
    album_ids = rng.choice(np.arange(1, 22000), n_albums, replace=False)
    album_titles = np.array(two_word_titles(n_albums, rng), dtype=object)

    genres, genres_all = plan_genre_lists(tracks["genre_top"], rng)
    span = int((FMA_LAST_DATE - FMA_FIRST_DATE).total_seconds())
    created = np.array([FMA_FIRST_DATE + timedelta(seconds=int(s)) for s in rng.integers(0, span, n)])
    album_created = pd.Series(created).groupby(album_of_track).min()  # an album predates its tracks
    n_tags = rng.integers(0, 3, n)
    return pd.DataFrame({
        "music_artist": np.array(artist_names, dtype=object)[artist_of_track],
        "music_artist_id": artist_ids[artist_of_track],
        "music_artist_location": artist_locations[artist_of_track],
        "album_id": album_ids[album_of_track],
        "album_title": album_titles[album_of_track],
        "album_tracks": np.bincount(album_of_track)[album_of_track],
        "album_date_created": album_created.to_numpy()[album_of_track],
        "number": number,
        "title": two_word_titles(n, rng),
        "genres": genres,
        "genres_all": genres_all,
        "license": weighted_choice(FMA_LICENSES, n, rng),
        "subset": weighted_choice(FMA_SUBSETS, n, rng),
        "split": weighted_choice(FMA_SPLITS, n, rng),
        "date_created": created,
        "listens": np.round(np.exp(rng.normal(6.5, 1.5, n))).astype(int),
        "favorites": rng.poisson(1.0, n),
        "interest": np.round(np.exp(rng.normal(7.0, 1.2, n))).astype(int),
        "language_code": rng.choice(["en", "en", ""], n),
        "track_tags": [str(sorted(rng.choice(MUSIC_TAGS, k, replace=False).tolist())) for k in n_tags],
    })


def fma_track_path(track_id: int) -> str:
    """FMA's layout: six-digit zero-padded id, folder = first three digits."""
    name = f"{track_id:06d}"
    return f"fma_large/{name[:3]}/{name}.mp3"


def fma_tracks_table(tracks: pd.DataFrame, seconds: float, sizes: list[int]) -> pd.DataFrame:
    """tracks.csv as FMA writes it: (top level, field) columns, index `track_id`, sorted by id."""
    date = "%Y-%m-%d %H:%M:%S"
    columns = {
        ("album", "date_created"): pd.to_datetime(tracks["album_date_created"]).dt.strftime(date),
        ("album", "id"): tracks["album_id"],
        ("album", "tags"): "[]",
        ("album", "title"): tracks["album_title"],
        ("album", "tracks"): tracks["album_tracks"],
        ("album", "type"): "Album",
        ("artist", "id"): tracks["music_artist_id"],
        ("artist", "location"): tracks["music_artist_location"],
        ("artist", "name"): tracks["music_artist"],
        ("artist", "tags"): "[]",
        ("set", "split"): tracks["split"],
        ("set", "subset"): tracks["subset"],
        ("track", "bit_rate"): [round(size * 8 / seconds, -3) for size in sizes],
        ("track", "date_created"): pd.to_datetime(tracks["date_created"]).dt.strftime(date),
        ("track", "duration"): max(1, round(seconds)),
        ("track", "favorites"): tracks["favorites"],
        ("track", "genre_top"): tracks["genre_top"],
        ("track", "genres"): [str(g) for g in tracks["genres"]],
        ("track", "genres_all"): [str(g) for g in tracks["genres_all"]],
        ("track", "interest"): tracks["interest"],
        ("track", "language_code"): tracks["language_code"],
        ("track", "license"): tracks["license"],
        ("track", "listens"): tracks["listens"],
        ("track", "number"): tracks["number"],
        ("track", "tags"): tracks["track_tags"],
        ("track", "title"): tracks["title"],
    }
    index = pd.Index(tracks["track_id"].to_numpy(), name="track_id")
    table = pd.DataFrame(
        {key: value.to_numpy() if isinstance(value, pd.Series) else value for key, value in columns.items()},
        index=index,
    )
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table[("track", "bit_rate")] = table[("track", "bit_rate")].astype(int)
    return table.sort_index()


def fma_genres_table(tracks: pd.DataFrame) -> pd.DataFrame:
    """genres.csv: every genre of the tree with how many sample tracks carry it (genres_all)."""
    counts = pd.Series([gid for genres in tracks["genres_all"] for gid in genres]).value_counts()
    return pd.DataFrame([
        {"genre_id": gid, "#tracks": int(counts.get(gid, 0)), "parent": parent, "title": title,
         "top_level": fma_top_level(gid)}
        for gid, (parent, title) in sorted(FMA_GENRES.items())
    ])
