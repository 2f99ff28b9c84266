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

import logging
from pathlib import Path
from typing import Any

from art2mus.config import AudioParams, SampleParams
from art2mus.data.sample.artworks import plan_artworks, write_paintings
from art2mus.data.sample.factors import (
    COMPOSITION_STYLES,
    COMPOSITION_TIMBRES,
    FACTORS,
    PALETTE_HUES,
    PALETTE_REGISTERS,
    PALETTE_TONICS,
    STREAM_PLAN,
    TEXTURE_BANDS,
    TEXTURE_NOTES_PER_SECOND,
    TIMBRE_GENRE_TOP,
    draw_factors,
    stream,
)
from art2mus.data.sample.fma_metadata import FMA_LICENSES, fma_track_path
from art2mus.data.sample.music import plan_tracks, write_music
from art2mus.data.sample.readme import readme_text
from art2mus.data.sample.tables import write_tables
from art2mus.io import atomic_path

__all__ = [
    "COMPOSITION_STYLES",
    "COMPOSITION_TIMBRES",
    "FACTORS",
    "FMA_LICENSES",
    "PALETTE_HUES",
    "PALETTE_REGISTERS",
    "PALETTE_TONICS",
    "TEXTURE_BANDS",
    "TEXTURE_NOTES_PER_SECOND",
    "TIMBRE_GENRE_TOP",
    "fma_track_path",
    "make_sample",
    "readme_text",
]

logger = logging.getLogger(__name__)


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
