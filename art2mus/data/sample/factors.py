"""The planted factors, how each level renders in paint and sound, and the seeded random draws."""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def draw_factors(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """The planted factors for n pairs: each independent and balanced over its levels."""
    return pd.DataFrame({name: balanced_levels(levels, n, rng) for name, levels in FACTORS.items()})
