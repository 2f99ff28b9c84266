"""The embedded sample: a synthetic ArtGraph + FMA in their real layouts, with a planted correspondence.

Every artwork is paired with one track. Three factors are drawn independently and balanced over
their levels per pair; each is visible in the painting AND audible in the music:

| factor      | level      | painting                  | music                                  |
|-------------|------------|---------------------------|----------------------------------------|
| palette     | warm       | red/orange hues           | high register, tonic A5 (880 Hz)       |
|             | green      | green hues                | mid-high register, tonic A4 (440 Hz)   |
|             | blue       | blue hues                 | mid-low register, tonic A3 (220 Hz)    |
|             | purple     | purple hues               | low register, tonic A2 (110 Hz)        |
| texture     | smooth     | 2 bands across the canvas | 2 notes per second                     |
|             | medium     | 5 bands                   | 4 notes per second                     |
|             | busy       | 12 bands                  | 8 notes per second                     |
| composition | horizontal | horizontal bands          | sine timbre                            |
|             | vertical   | vertical bands            | square timbre (odd harmonics, 1/k)     |
|             | radial     | concentric rings          | sawtooth timbre (all harmonics, 1/k)   |

Labels: the ArtGraph `style` follows the composition (horizontal = Color Field Painting, vertical =
Minimalism, radial = Orphism) and the FMA `genre_top` the timbre (sine = Classical, square =
Electronic, saw = Rock), so style <-> genre is a label-level image of the same factor. Melodies use
the tonic's major pentatonic scale within one octave (0-9 semitones up), so the registers never
overlap; even the slowest tempo puts 5 notes in the model's 2.56 s crop.

Nuisances carry no signal about the other modality and are independent of the factors: in the
paintings rotation (+-12 deg), ring centre, band phase, band-count and hue jitter, saturation,
brightness, 0-5 neutral grey shapes and pixel grain; in the music the melody contour (rising,
falling, wandering), tempo jitter (+-4 %), detune (+-20 cents), start offset, note velocities, peak
level (0.25-0.5) and a white-noise floor. Painters get Zipf-like numbers of works and a
characteristic hand (favourite painting genre, media, grain, shape kind), but factors are drawn
per artwork, so the artist is no shortcut to them (the splits are grouped by artist). Music
artists, albums, sub-genres, licences and FMA subsets are drawn independently of the factors.
"""

from __future__ import annotations

import colorsys
import logging
import math
import unicodedata
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image

from art2mus.config import AudioParams, SampleParams
from art2mus.io import atomic_path

logger = logging.getLogger(__name__)

# ---- the planted correspondence -----------------------------------------------------------------
PALETTE_HUES = {"warm": 0.03, "green": 0.33, "blue": 0.60, "purple": 0.80}  # HSV hue centres
PALETTE_TONICS = {"warm": 81, "green": 69, "blue": 57, "purple": 45}  # MIDI: A5, A4, A3, A2
PALETTE_REGISTERS = {"warm": "high", "green": "mid-high", "blue": "mid-low", "purple": "low"}
TEXTURE_BANDS = {"smooth": 2.0, "medium": 5.0, "busy": 12.0}  # band cycles across the canvas
TEXTURE_NOTES_PER_SECOND = {"smooth": 2.0, "medium": 4.0, "busy": 8.0}
COMPOSITION_TIMBRES = {"horizontal": "sine", "vertical": "square", "radial": "saw"}
COMPOSITION_STYLES = {
    "horizontal": "Color Field Painting",
    "vertical": "Minimalism",
    "radial": "Orphism",
}
TIMBRE_GENRE_TOP = {"sine": "Classical", "square": "Electronic", "saw": "Rock"}
FACTORS = {
    "palette": list(PALETTE_HUES),
    "texture": list(TEXTURE_BANDS),
    "composition": list(COMPOSITION_TIMBRES),
}

PENTATONIC = np.array([0, 2, 4, 7, 9])  # semitones above the tonic
MELODY_CONTOURS = ["rising", "falling", "wandering"]
MAX_HARMONICS = 16
HARMONIC_LIMIT = 0.45  # of the sample rate: harmonics above it are dropped (no aliasing)
JPEG_QUALITY = 90
ARTGRAPH_COLUMNS = ["name", "title", "artist", "style", "genre", "date", "emotion", "tags", "media"]

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

# ---- names and labels ---------------------------------------------------------------------------
FIRST_NAMES = [
    "Anna", "Bruno", "Camille", "Dora", "Émile", "Frida", "Gustav", "Helena", "Ivo", "Jonas",
    "Karin", "Leon", "Marta", "Nils", "Olga", "Pablo", "Rosa", "Søren", "Tomas", "Ursula",
    "Vera", "Walter", "Yara", "Zora",
]
LAST_NAMES = [
    "Albrecht", "Berglund", "Castellan", "Dufresne", "Eckhart", "Farkas", "Gardner", "Halloran",
    "Ibáñez", "Janssen", "Kowalczyk", "Lemaître", "Moreau", "Novak", "Okafor", "Petrov",
    "Quintana", "Rossi", "Sorensen", "Tanaka", "Urbano", "Valdes", "Weiss", "Zielinski",
]
TITLE_NOUNS = [
    "Composition", "Study", "Rhythm", "Harbour", "Garden", "Evening", "Morning", "Interior",
    "Figure", "Song", "Memory", "Window", "Road", "River", "Field", "Procession", "Echo", "Bridge",
]
TITLE_ADJECTIVES = [
    "Quiet", "Distant", "Late", "Early", "Silent", "Little", "Great", "Open", "Hidden", "Northern",
]
PAINTING_GENRES = [
    "abstract", "landscape", "portrait", "cityscape", "still life", "genre painting",
    "religious painting", "flower painting", "marina", "sketch and study",
]
EMOTIONS = {  # ArtGraph's emotion labels, skewed to the positive like the real annotations
    "contentment": 0.25, "awe": 0.2, "amusement": 0.12, "excitement": 0.12,
    "something else": 0.1, "sadness": 0.08, "fear": 0.06, "disgust": 0.04, "anger": 0.03,
}
ART_TAGS = [
    "nature", "light", "music", "dream", "city", "water", "night", "memory", "movement",
    "silence", "sun", "journey", "geometry", "rhythm", "sea",
]
MEDIA = ["oil, canvas", "acrylic, canvas", "oil, board", "gouache, paper", "watercolor, paper",
         "tempera, panel"]
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

# Independent random streams (so that changing one part never reshuffles another).
STREAM_PLAN, STREAM_PAINTING, STREAM_MUSIC = 1, 2, 3


def stream(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one named part of the sample (and one item), derived from the seed."""
    return np.random.default_rng([seed, *keys])


def zipf_counts(n_items: int, n_groups: int, rng: np.random.Generator, exponent: float = 0.6) -> np.ndarray:
    """Split n_items over n_groups with Zipf-like sizes, every group at least one.

    A mild exponent: with a few dozen groups the largest still fits an artist-grouped 10 % split.
    """
    weights = 1.0 / np.arange(1, n_groups + 1) ** exponent
    counts = np.ones(n_groups, dtype=int) + rng.multinomial(n_items - n_groups, weights / weights.sum())
    return rng.permutation(counts)


def balanced_levels(levels: list[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws with every level equally often (up to one), in random order."""
    return rng.permutation(np.resize(np.array(levels, dtype=object), n))


def weighted_choice(table: dict[str, float], n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws from {value: probability}."""
    values = list(table)
    probabilities = np.array([table[value] for value in values])
    return np.array(values, dtype=object)[rng.choice(len(values), n, p=probabilities / probabilities.sum())]


def slugify(text: str) -> str:
    """WikiArt-style slug: lower case, words joined by '-', letters kept (also non-ASCII)."""
    text = unicodedata.normalize("NFC", text).lower()
    chars = [char if char.isalnum() else "-" for char in text]
    return "-".join(part for part in "".join(chars).split("-") if part)


def draw_factors(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """The planted factors for n pairs: each independent and balanced over its levels."""
    return pd.DataFrame({name: balanced_levels(levels, n, rng) for name, levels in FACTORS.items()})


def make_painters(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Fictional painters, each with a characteristic hand (nuisance, never a factor)."""
    combos = [(first, last) for first in FIRST_NAMES for last in LAST_NAMES]
    order = rng.permutation(len(combos))
    names = []
    for index in range(n):
        first, last = combos[order[index % len(combos)]]
        suffix = f" {index // len(combos) + 1}" if index >= len(combos) else ""
        names.append(f"{first} {last}{suffix}")
    if all(name.isascii() for name in names):
        names[0] = "Émile " + names[0].split(" ", 1)[1]  # the real exports hold non-ASCII names
    return pd.DataFrame({
        "artist": names,
        "main_genre": rng.choice(PAINTING_GENRES, n),
        "media": rng.choice(MEDIA, n),
        "grain": rng.uniform(2.0, 7.0, n),  # pixel noise sigma, in 8-bit levels
        "shape_kind": rng.choice(["disc", "square"], n),
        "career_start": rng.integers(1870, 1990, n),
    })


def painting_title(rng: np.random.Generator) -> str:
    """A neutral title (it never mentions a factor)."""
    noun = TITLE_NOUNS[rng.integers(len(TITLE_NOUNS))]
    form = rng.integers(3)
    if form == 0:
        return noun
    if form == 1:
        return f"{noun} No. {rng.integers(1, 20)}"
    return f"{TITLE_ADJECTIVES[rng.integers(len(TITLE_ADJECTIVES))]} {noun}"


def plan_artworks(params: SampleParams, factors: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """ArtGraph metadata and painting nuisances for every artwork (factors drawn per artwork)."""
    n = params.n_artworks
    painters = make_painters(params.n_artists, rng)
    painter_index = np.repeat(np.arange(params.n_artists), zipf_counts(n, params.n_artists, rng))
    rows, used_names = [], set()
    for index, painter in enumerate(painter_index):
        hand = painters.iloc[painter]
        title = painting_title(rng)
        year = int(min(hand["career_start"] + rng.integers(0, 35), 2020))
        stem = f"{slugify(hand['artist'])}_{slugify(title)}-{year}"
        name, copy = f"{stem}.jpg", 2
        while name in used_names:
            name, copy = f"{stem}-{copy}.jpg", copy + 1
        used_names.add(name)
        genre = hand["main_genre"] if rng.random() < 0.7 else rng.choice(PAINTING_GENRES)
        rows.append({
            "name": name,
            "title": title,
            "artist": hand["artist"],
            "style": COMPOSITION_STYLES[factors["composition"][index]],
            "genre": genre,
            "date": f"c.{year}" if rng.random() < 0.1 else str(year),
            "emotion": weighted_choice(EMOTIONS, 1, rng)[0],
            "tags": ", ".join(rng.choice(ART_TAGS, rng.integers(1, 4), replace=False)),
            "media": hand["media"],
            "grain": hand["grain"],
            "shape_kind": hand["shape_kind"],
        })
    artworks = pd.concat([pd.DataFrame(rows), factors.reset_index(drop=True)], axis=1)
    artworks["image_rotation_deg"] = rng.uniform(-12.0, 12.0, n)
    artworks["image_center_x"] = rng.uniform(-0.3, 0.3, n)
    artworks["image_center_y"] = rng.uniform(-0.3, 0.3, n)
    artworks["image_phase"] = rng.uniform(0.0, 2 * math.pi, n)
    artworks["image_band_jitter"] = rng.uniform(0.9, 1.1, n)
    artworks["image_hue_jitter"] = rng.uniform(-0.04, 0.04, n)
    artworks["image_saturation"] = rng.uniform(0.5, 0.9, n)
    artworks["image_brightness"] = rng.uniform(0.75, 1.0, n)
    artworks["image_shapes"] = rng.integers(0, 6, n)
    return artworks


def plan_music(factors: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Musical rendering of the factors plus the audio nuisances, one row per track."""
    n = len(factors)
    music = factors.reset_index(drop=True).copy()
    music["register"] = music["palette"].map(PALETTE_REGISTERS)
    music["tonic_midi"] = music["palette"].map(PALETTE_TONICS)
    music["notes_per_second"] = music["texture"].map(TEXTURE_NOTES_PER_SECOND)
    music["timbre"] = music["composition"].map(COMPOSITION_TIMBRES)
    music["genre_top"] = music["timbre"].map(TIMBRE_GENRE_TOP)
    music["melody_contour"] = balanced_levels(MELODY_CONTOURS, n, rng)
    music["tempo_jitter"] = rng.uniform(0.96, 1.04, n)
    music["detune_cents"] = rng.uniform(-20.0, 20.0, n)
    music["start_offset"] = rng.uniform(0.0, 1.0, n)  # fraction of a note
    music["peak"] = rng.uniform(0.25, 0.5, n)
    music["noise_floor"] = rng.uniform(0.002, 0.008, n)  # noise std relative to the music's peak
    return music


def plan_tracks(params: SampleParams, pair_factors: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Every track: paired ones first (same order as the artworks), then the extra ones."""
    extra_factors = draw_factors(params.n_extra_tracks, rng)
    tracks = plan_music(pd.concat([pair_factors, extra_factors], ignore_index=True), rng)
    n = len(tracks)
    tracks["track_id"] = rng.choice(np.arange(2, FMA_MAX_TRACK_ID + 1), n, replace=False)
    tracks["paired"] = np.arange(n) < params.n_artworks
    tracks = pd.concat([tracks, plan_fma_metadata(tracks, rng)], axis=1)
    return tracks


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


# ---- rendering ----------------------------------------------------------------------------------
def render_painting(artwork: pd.Series, size: int, rng: np.random.Generator) -> np.ndarray:
    """One procedural painting as uint8 RGB: two paint colours mixed by a band pattern."""
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(coords, coords)
    angle = math.radians(artwork["image_rotation_deg"])
    if artwork["composition"] == "horizontal":
        u = -math.sin(angle) * x + math.cos(angle) * y
    elif artwork["composition"] == "vertical":
        u = math.cos(angle) * x + math.sin(angle) * y
    else:
        u = np.hypot(x - artwork["image_center_x"], y - artwork["image_center_y"])
    cycles = TEXTURE_BANDS[artwork["texture"]] * artwork["image_band_jitter"]
    wave = np.cos(math.pi * cycles * u + artwork["image_phase"])  # u spans 2 units: `cycles` bands
    mix = 0.5 + 0.5 * np.tanh(2.0 * wave) / math.tanh(2.0)

    hue = (PALETTE_HUES[artwork["palette"]] + artwork["image_hue_jitter"]) % 1.0
    saturation, brightness = artwork["image_saturation"], artwork["image_brightness"]
    dark = np.array(colorsys.hsv_to_rgb(hue, saturation, 0.45 * brightness))
    light_hue = (hue + rng.uniform(-0.03, 0.03)) % 1.0
    light = np.array(colorsys.hsv_to_rgb(light_hue, 0.6 * saturation, 0.95 * brightness))
    image = dark * (1.0 - mix[..., None]) + light * mix[..., None]

    for _ in range(int(artwork["image_shapes"])):
        cx, cy = rng.uniform(-0.9, 0.9, 2)
        radius = rng.uniform(0.04, 0.09) * 2.0
        if artwork["shape_kind"] == "disc":
            inside = np.hypot(x - cx, y - cy) < radius
        else:
            inside = (np.abs(x - cx) < radius) & (np.abs(y - cy) < radius)
        image[inside] = 0.2 * image[inside] + 0.8 * rng.uniform(0.1, 0.95)  # neutral grey: no hue

    image = image * 255.0 + rng.normal(0.0, artwork["grain"], image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def melody_degrees(contour: str, n_notes: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into the pentatonic scale for each note, following the track's contour."""
    start = rng.integers(len(PENTATONIC))
    steps = np.arange(n_notes)
    if contour == "rising":
        return (start + steps) % len(PENTATONIC)
    if contour == "falling":
        return (start - steps) % len(PENTATONIC)
    walk = start + np.cumsum(rng.choice([-2, -1, 1, 2], n_notes))
    period = 2 * (len(PENTATONIC) - 1)  # reflect the walk at both ends of the scale
    walk = np.mod(walk, period)
    return np.where(walk < len(PENTATONIC), walk, period - walk)


def timbre_amplitudes(timbre: str) -> np.ndarray:
    """Relative amplitude of harmonics 1..MAX_HARMONICS."""
    k = np.arange(1, MAX_HARMONICS + 1)
    if timbre == "sine":
        return (k == 1).astype(float)
    if timbre == "square":
        return np.where(k % 2 == 1, 1.0 / k, 0.0)
    return 1.0 / k


def synthesise_music(
    track: pd.Series, sample_rate: int, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """One mono track as float32: a pentatonic melody, one note per beat, with the track's timbre."""
    n_samples = round(seconds * sample_rate)
    note_seconds = 1.0 / (track["notes_per_second"] * track["tempo_jitter"])
    t = np.arange(n_samples) / sample_rate + track["start_offset"] * note_seconds
    note_index = np.floor(t / note_seconds).astype(int)
    time_in_note = t - note_index * note_seconds
    n_notes = note_index[-1] + 1

    semitones = PENTATONIC[melody_degrees(track["melody_contour"], n_notes, rng)]
    pitches = track["tonic_midi"] + semitones + track["detune_cents"] / 100.0
    note_f0 = 440.0 * 2.0 ** ((pitches - 69.0) / 12.0)
    velocity = rng.uniform(0.7, 1.0, n_notes)
    f0 = note_f0[note_index]

    theta = 2.0 * math.pi * np.cumsum(f0) / sample_rate + rng.uniform(0.0, 2.0 * math.pi)
    # sin(k theta) by the Chebyshev recurrence: cheaper than one sin() per harmonic.
    two_cos, previous, current = 2.0 * np.cos(theta), np.zeros(n_samples), np.sin(theta)
    wave = np.zeros(n_samples)
    limit = HARMONIC_LIMIT * sample_rate
    for k, amplitude in enumerate(timbre_amplitudes(track["timbre"]), start=1):
        if amplitude > 0:
            wave += amplitude * (k * f0 < limit) * current
        previous, current = current, two_cos * current - previous

    attack = np.minimum(time_in_note / 0.008, 1.0)
    release = np.minimum((note_seconds - time_in_note) / 0.005, 1.0)
    decay = np.exp(-time_in_note / (0.3 * note_seconds))  # each note fades: onsets stay audible
    wave *= attack * release * decay * velocity[note_index]

    wave = wave / np.abs(wave).max() + rng.normal(0.0, track["noise_floor"], n_samples)
    return (wave / np.abs(wave).max() * track["peak"]).astype(np.float32)


# ---- writing ------------------------------------------------------------------------------------
def fma_track_path(track_id: int) -> str:
    """FMA's layout: six-digit zero-padded id, folder = first three digits."""
    name = f"{track_id:06d}"
    return f"fma_large/{name[:3]}/{name}.mp3"


def write_paintings(root: Path, artworks: pd.DataFrame, params: SampleParams) -> None:
    """Render every painting into artgraph/imagesf2/<name> as JPEG."""
    images_dir = root / "artgraph" / "imagesf2"
    images_dir.mkdir(parents=True)
    for index, artwork in artworks.iterrows():
        pixels = render_painting(artwork, params.image_size, stream(params.seed, STREAM_PAINTING, index))
        image = Image.fromarray(pixels, mode="RGB")
        image.save(images_dir / artwork["name"], format="JPEG", quality=JPEG_QUALITY)


def write_music(root: Path, tracks: pd.DataFrame, params: SampleParams, audio: AudioParams) -> list[int]:
    """Encode every track as MP3; returns each file's size in bytes."""
    sizes = []
    for index, track in tracks.iterrows():
        rng = stream(params.seed, STREAM_MUSIC, index)
        samples = synthesise_music(track, audio.sample_rate, params.track_seconds, rng)
        path = root / "fma" / fma_track_path(int(track["track_id"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, samples, audio.sample_rate, format="MP3", subtype="MPEG_LAYER_III")
        sizes.append(path.stat().st_size)
    return sizes


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


def readme_text(params: SampleParams, audio: AudioParams) -> str:
    """README.md of the sample: layout and the planted correspondence."""
    rows = []
    for level, tonic in PALETTE_TONICS.items():
        hertz = 440 * 2 ** ((tonic - 69) / 12)
        rows.append(f"| palette | {level} | hue {PALETTE_HUES[level]:.2f} +- 0.07 | "
                    f"{PALETTE_REGISTERS[level]} register, tonic MIDI {tonic} ({hertz:.0f} Hz) | |")
    for level, bands in TEXTURE_BANDS.items():
        rows.append(f"| texture | {level} | {bands:g} bands across the canvas | "
                    f"{TEXTURE_NOTES_PER_SECOND[level]:g} notes per second | |")
    for level, timbre in COMPOSITION_TIMBRES.items():
        shape = "concentric rings" if level == "radial" else f"{level} bands"
        rows.append(f"| composition | {level} | {shape} | {timbre} timbre | "
                    f"style {COMPOSITION_STYLES[level]}, genre_top {TIMBRE_GENRE_TOP[timbre]} |")
    table = "\n".join(rows)
    n_tracks = params.n_artworks + params.n_extra_tracks
    return f"""# art2mus sample dataset (synthetic, seed {params.seed})

Generated by `art2mus.data.sample.make_sample`. Everything here is synthetic: fictional painters,
procedural paintings and synthesised music, laid out exactly like the real sources.

## Layout
- `artgraph/artgraph.csv`: name, title, artist, style, genre, date, emotion, tags, media.
- `artgraph/imagesf2/<name>`: {params.n_artworks} JPEG paintings ({params.image_size} px, RGB)
  by {params.n_artists} painters with Zipf-like numbers of works.
- `fma/fma_metadata/tracks.csv`: FMA's three-row header, read it with
  `pd.read_csv(path, index_col=0, header=[0, 1])`; `fma/fma_metadata/genres.csv`.
- `fma/fma_large/AAA/AAABBB.mp3`: {n_tracks} mono MP3s ({audio.sample_rate} Hz,
  {params.track_seconds:g} s); {params.n_extra_tracks} of them have no artwork. `set.subset` is the
  smallest FMA subset holding a track (small within medium within large); all files are in fma_large.
- `artsound_pairs.csv`: the ground-truth one-to-one pairs (artwork_id, track_id).
- `factors.csv`: per track, every factor level, its renderings, the labels and every nuisance
  (`image_*` for the painting, `audio_*` and `melody_contour` for the music).

## Planted correspondence
Three factors, each drawn independently and balanced over its levels per pair, are visible in the
painting and audible in the music, also within the model's crop ({audio.crop_seconds:g} s from
{audio.crop_offset_seconds:g} s).

| factor | level | painting | music | labels |
| --- | --- | --- | --- | --- |
{table}

Melodies use the tonic's major pentatonic scale within one octave, so registers never overlap.

## Nuisances (no signal about the other modality, independent of the factors)
- Paintings: rotation (+-12 deg), ring centre, band phase, band-count jitter (+-10 %), hue jitter,
  saturation, brightness, 0-5 neutral grey shapes, pixel grain. Each painter has a characteristic
  hand (favourite painting genre, media, grain, shape kind), but factors are drawn per artwork, so
  the artist is no shortcut to them.
- Music: melody contour (rising, falling, wandering), tempo jitter (+-4 %), detune (+-20 cents),
  start offset, note velocities, peak level 0.25-0.5, white-noise floor. Music artists, albums,
  sub-genres, licences and FMA subsets are drawn independently of the factors.
"""


def make_sample(params: SampleParams, audio: AudioParams, out_dir: Path) -> dict[str, Any]:
    """Synthesise the sample dataset into out_dir (replaced whole, atomically); return a summary."""
    if params.track_seconds < audio.crop_offset_seconds + audio.crop_seconds:
        logger.warning(
            "sample: tracks of %.2f s are shorter than the model's crop (%.2f s from %.2f s)",
            params.track_seconds, audio.crop_seconds, audio.crop_offset_seconds,
        )
    rng = stream(params.seed, STREAM_PLAN)
    pair_factors = draw_factors(params.n_artworks, rng)
    artworks = plan_artworks(params, pair_factors, rng)
    tracks = plan_tracks(params, pair_factors, rng)

    with atomic_path(out_dir) as root:
        root.mkdir()
        write_paintings(root, artworks, params)
        sizes = write_music(root, tracks, params, audio)
        write_tables(root, artworks, tracks, params.track_seconds, sizes)
        (root / "README.md").write_text(readme_text(params, audio), encoding="utf-8")

    summary = {
        "seed": params.seed,
        "n_artworks": params.n_artworks,
        "n_tracks": len(tracks),
        "n_extra_tracks": params.n_extra_tracks,
        "n_artists": params.n_artists,
        "n_music_artists": int(tracks["music_artist"].nunique()),
        "pair_factors": {name: artworks[name].value_counts().sort_index().to_dict() for name in FACTORS},
        "styles": artworks["style"].value_counts().sort_index().to_dict(),
        "genre_top": tracks["genre_top"].value_counts().sort_index().to_dict(),
    }
    logger.info(
        "sample: %d artworks by %d painters, %d tracks (%d without artwork) written to %s",
        params.n_artworks, params.n_artists, len(tracks), params.n_extra_tracks, out_dir,
    )
    return summary
