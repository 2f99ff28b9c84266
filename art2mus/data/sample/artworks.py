"""The sample's ArtGraph side: fictional painters, artwork metadata and procedural paintings."""

from __future__ import annotations

import colorsys
import math
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from art2mus.config import SampleParams
from art2mus.data.sample.factors import (
    COMPOSITION_STYLES,
    PALETTE_HUES,
    STREAM_PAINTING,
    TEXTURE_BANDS,
    stream,
    weighted_choice,
    zipf_counts,
)

JPEG_QUALITY = 90
ARTGRAPH_COLUMNS = ["name", "title", "artist", "style", "genre", "date", "emotion", "tags", "media"]

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


def slugify(text: str) -> str:
    """WikiArt-style slug: lower case, words joined by '-', letters kept (also non-ASCII)."""
    text = unicodedata.normalize("NFC", text).lower()
    chars = [char if char.isalnum() else "-" for char in text]
    return "-".join(part for part in "".join(chars).split("-") if part)


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


def write_paintings(root: Path, artworks: pd.DataFrame, params: SampleParams) -> None:
    """Render every painting into artgraph/imagesf2/<name> as JPEG."""
    images_dir = root / "artgraph" / "imagesf2"
    images_dir.mkdir(parents=True)
    for index, artwork in artworks.iterrows():
        pixels = render_painting(artwork, params.image_size, stream(params.seed, STREAM_PAINTING, index))
        image = Image.fromarray(pixels, mode="RGB")
        image.save(images_dir / artwork["name"], format="JPEG", quality=JPEG_QUALITY)
