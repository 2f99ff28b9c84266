"""Synthetic inputs for the HTML evaluation report: artworks, generated WAVs, reference MP3s, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from art2mus.evaluation.report import MetricRow, ReportItem

# Text a data file could hold: markup that would run or inject if it reached the page unescaped.
HOSTILE_TITLE = '<script>window.__pwned = true</script>Sunset & "Sea"'
HOSTILE_ID = '"><img src=x onerror="window.__pwned = true">'
HOSTILE_MODEL = "<b onmouseover=alert(1)>mean</b>"


def write_painting(path: Path, seed: int, size: int = 320) -> None:
    """A colourful gradient with a disc, larger than the report's thumbnail."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    hue = rng.uniform(0.2, 1.0, size=3)
    pixels = np.stack([hue[0] * x, hue[1] * y, hue[2] * (1 - x)], axis=-1)
    centre = rng.uniform(0.3, 0.7, size=2)
    pixels[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 < 0.04] = rng.uniform(0, 1, size=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)


def tone(seconds: float, rate: int, pitch: float, channels: int = 1) -> np.ndarray:
    """A few notes around `pitch`, so the spectrogram has visible structure."""
    t = np.arange(round(seconds * rate)) / rate
    pitches = pitch * 2 ** (np.floor(t * 4) % 5 / 12)
    wave = 0.3 * np.sin(2 * np.pi * np.cumsum(pitches) / rate).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


def make_report_items(root: Path, n: int) -> list[ReportItem]:
    """n artworks (PNG, JPEG), generated 16 kHz WAVs of 2.56 s, 44.1 kHz stereo MP3 references of 4 s."""
    items = []
    for index in range(n):
        image = root / "images" / f"artwork-{index}.{'png' if index % 2 else 'jpg'}"
        write_painting(image, seed=index)
        generated = root / "generated" / f"{index}.wav"
        reference = root / "reference" / f"{index}.mp3"
        generated.parent.mkdir(parents=True, exist_ok=True)
        reference.parent.mkdir(parents=True, exist_ok=True)
        sf.write(generated, tone(2.56, 16000, 220.0 * (1 + index)), 16000)
        sf.write(reference, tone(4.0, 44100, 330.0 * (1 + index), channels=2), 44100, format="MP3")
        hostile = index == 1
        items.append(ReportItem(
            artwork_id=HOSTILE_ID if hostile else f"artwork-{index}",
            title=HOSTILE_TITLE if hostile else f"Study no. {index}",
            artist=f"Painter {index % 2}",
            image=image, generated=generated, reference=reference,
        ))
    return items


def metric_table() -> list[MetricRow]:
    """The aligner against a baseline whose one metric is invalid, with its reason."""
    return [
        MetricRow("aligner", {
            "top1_accuracy": {"value": 0.4375, "low": 0.25, "high": 0.625},
            "fad": {"value": 12.345678, "low": 10.1, "high": 14.9, "valid": True, "note": "64 clips"},
        }),
        MetricRow(HOSTILE_MODEL, {
            "top1_accuracy": {"value": 0.125, "low": 0.0, "high": 0.25},
            "fad": {"value": None, "low": None, "high": None, "valid": False,
                    "note": "needs at least 2 clips <per set>"},
        }),
    ]


REPORT_META = {
    "model": "models:/art2mus/3",
    "weights_sha256": "0123abcd",
    "split": "test",
    "seeds": [0, 1],
    "date": "2026-01-01",
}
