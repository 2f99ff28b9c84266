"""The sample's music: how each track renders the factors, synthesised and written as MP3."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from art2mus.config import AudioParams, SampleParams
from art2mus.data.sample.factors import (
    COMPOSITION_TIMBRES,
    PALETTE_REGISTERS,
    PALETTE_TONICS,
    STREAM_MUSIC,
    TEXTURE_NOTES_PER_SECOND,
    TIMBRE_GENRE_TOP,
    balanced_levels,
    draw_factors,
    stream,
)
from art2mus.data.sample.fma_metadata import FMA_MAX_TRACK_ID, fma_track_path, plan_fma_metadata

PENTATONIC = np.array([0, 2, 4, 7, 9])  # semitones above the tonic
MELODY_CONTOURS = ["rising", "falling", "wandering"]
MAX_HARMONICS = 16
HARMONIC_LIMIT = 0.45  # of the sample rate: harmonics above it are dropped (no aliasing)


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
