"""The HTML evaluation report: per test artwork its image, generated and reference audio, their mels.

`write_report` writes a self-contained folder (index.html plus assets/, no external resources):
images become small thumbnails, audio becomes 16 kHz mono WAV (the reference cut to the model's
crop and peak-normalised, so both players cover what the model was asked for), and each clip gets a log-mel PNG drawn
on the AudioLDM2 front-end with one colour scale per pair. Every text is escaped: titles, ids and
metadata come from data files and may hold markup. Asset names come from the item's position,
never from its name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch

from art2mus.config import AudioParams
from art2mus.errors import Art2MusError
from art2mus.io import atomic_path
from art2mus.models.audio import log_mel, mel_transform, model_crop, read_mono

THUMBNAIL_PIXELS = 256
ASSETS = "assets"


@dataclass
class ReportItem:
    """One test artwork with its generated clip and the track it is paired with."""

    artwork_id: str
    title: str
    artist: str
    image: Path  # the artwork file
    generated: Path  # WAV written by the evaluation
    reference: Path  # the paired track (MP3 or WAV)


@dataclass
class MetricRow:
    """One row of the comparison table: a model or baseline and its metrics.

    metrics: name -> {"value", "low", "high", optional "valid" (default True), optional "note"}.
    """

    model: str
    metrics: dict[str, dict]


@dataclass
class Clip:
    """A clip as the report shows it: its WAV and its mel PNG, relative to index.html."""

    audio: str
    mel: str
    seconds: float


@dataclass
class Entry:
    """One artwork's section of the page."""

    artwork_id: str
    title: str
    artist: str
    image: str
    generated: Clip
    reference: Clip


@dataclass
class Cell:
    """One metric of one row, formatted for the table."""

    value: str
    interval: str
    valid: bool
    note: str
    absent: bool = False  # not computed, for a stated reason (a baseline that could not run): not a failure


ABSENT_PREFIX = "absent"  # how the evaluation notes a result it did not compute (evaluate.metric_cell)


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fafafa; }
h1 { margin: 0 0 .5rem; font-size: 1.5rem; }
h2 { font-size: 1.15rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #d0d0d0; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.meta th { font-weight: 600; }
.ci { color: #666; font-size: .85em; }
.invalid { background: #fdecea; color: #8a1c12; }
.absent { color: #666; font-style: italic; }
.note { display: block; color: #666; font-size: .8em; max-width: 18rem; }
.artwork { display: grid; grid-template-columns: 260px 1fr 1fr; gap: 1rem; align-items: start;
  background: #fff; border: 1px solid #d0d0d0; padding: .8rem; margin-bottom: 1rem; }
.artwork header { grid-column: 1 / -1; }
.artwork .id { color: #666; font-size: .85em; }
.artwork img { max-width: 100%; height: auto; display: block; }
figure { margin: 0; }
figcaption { font-weight: 600; margin-bottom: .3rem; }
audio { width: 100%; margin-bottom: .3rem; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<table class="meta">
{% for key, value in meta %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}</table>

<h2>Metrics</h2>
<table class="metrics">
<thead><tr><th>model</th>{% for name in metric_names %}<th>{{ name }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in rows %}<tr><th>{{ row.model }}</th>{% for cell in row.cells %}{% if cell is none %}<td>&mdash;</td>{% elif cell.absent %}<td class="absent">absent<span class="note">{{ cell.note }}</span></td>{% elif not cell.valid %}<td class="invalid">invalid<span class="note">{{ cell.note }}</span></td>{% else %}<td>{{ cell.value }} <span class="ci">{{ cell.interval }}</span>{% if cell.note %}<span class="note">{{ cell.note }}</span>{% endif %}</td>{% endif %}{% endfor %}</tr>
{% endfor %}</tbody>
</table>
<p class="ci">Each value with its confidence interval [low, high].</p>

<h2>Test artworks ({{ entries | length }})</h2>
{% for entry in entries %}<section class="artwork">
<header><strong>{{ entry.title }}</strong> &middot; {{ entry.artist }} <span class="id">{{ entry.artwork_id }}</span></header>
<figure><img class="artwork-image" src="{{ entry.image }}" alt="{{ entry.title }}"></figure>
{% for label, clip in (("generated", entry.generated), ("reference", entry.reference)) %}<figure class="{{ label }}">
<figcaption>{{ label }} ({{ "%.2f" | format(clip.seconds) }} s)</figcaption>
<audio class="{{ label }}" controls preload="metadata" src="{{ clip.audio }}"></audio>
<img class="mel" src="{{ clip.mel }}" alt="log-mel spectrogram of the {{ label }} clip">
</figure>
{% endfor %}</section>
{% endfor %}</body>
</html>
"""


def write_report(
    out_dir: Path, items: list[ReportItem], table: list[MetricRow], title: str, meta: dict,
    audio: AudioParams | None = None,
) -> Path:
    """Write out_dir/index.html with its assets, atomically; return the index path."""
    audio = audio or AudioParams()
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        (tmp / ASSETS).mkdir(parents=True)
        transform = mel_transform(audio)
        entries = [write_entry(tmp, index, item, audio, transform) for index, item in enumerate(items, start=1)]
        html = render_page(title, meta, table, entries)
        (tmp / "index.html").write_text(html, encoding="utf-8")
    return out_dir / "index.html"


def render_page(title: str, meta: dict, table: list[MetricRow], entries: list[Entry]) -> str:
    """The page's HTML; autoescaping escapes every value put into the template."""
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    names = metric_names(table)
    rows = [{"model": row.model, "cells": [metric_cell(row.metrics.get(name)) for name in names]} for row in table]
    return environment.from_string(TEMPLATE).render(
        title=title, meta=[(str(key), meta_text(value)) for key, value in meta.items()],
        metric_names=names, rows=rows, entries=entries,
    )


def metric_names(table: list[MetricRow]) -> list[str]:
    """Every metric in the table, in order of first appearance."""
    names: dict[str, None] = {}
    for row in table:
        names.update(dict.fromkeys(row.metrics))
    return list(names)


def metric_cell(result: dict | None) -> Cell | None:
    """A metric result as shown: value with its interval, `absent` or `invalid` with the reason.

    Absent: no value and a note starting "absent" (what the evaluation writes for a result it could not
    compute, e.g. the caption baseline without a captioner), shown with the note's reason."""
    if result is None:
        return None
    note = str(result.get("note") or "")
    if result.get("value") is None and note.startswith(ABSENT_PREFIX):
        reason = note[len(ABSENT_PREFIX):].lstrip(" :") or "not computed"
        return Cell(value="", interval="", valid=False, note=reason, absent=True)
    if not result.get("valid", True):
        return Cell(value="", interval="", valid=False, note=note or "no reason given")
    interval = f"[{number_text(result.get('low'))}, {number_text(result.get('high'))}]"
    return Cell(value=number_text(result.get("value")), interval=interval, valid=True, note=note)


def number_text(value: Any) -> str:
    """Four significant digits for numbers, a dash for missing ones."""
    if value is None:
        return "—"
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return "—" if math.isnan(float(value)) else f"{float(value):.4g}"
    return str(value)


def meta_text(value: Any) -> str:
    """A metadata value as one line of text (containers as JSON)."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def write_entry(root: Path, index: int, item: ReportItem, audio: AudioParams, transform: torch.nn.Module) -> Entry:
    """Write one artwork's thumbnail, WAVs and mel PNGs under root/assets; return its page entry."""
    stem = f"{ASSETS}/{index:03d}"
    write_thumbnail(Path(item.image), root / f"{stem}-image.jpg")
    generated = read_mono(item.generated, audio.sample_rate)
    # The clip the model is scored against: its crop, peak-normalised as the model's inputs are.
    reference = model_crop(read_mono(item.reference, audio.sample_rate), audio)
    if len(generated) < audio.hop_length:
        raise Art2MusError(f"{item.generated}: generated audio is shorter than one mel frame "
                           f"({len(generated)} samples; artwork {item.artwork_id!r})")
    mels = [log_mel(torch.from_numpy(wave)[None], audio, transform)[0].numpy() for wave in (generated, reference)]
    low = min(float(mel.min()) for mel in mels)
    high = max(float(mel.max()) for mel in mels)
    clips = []
    for label, wave, mel in zip(("generated", "reference"), (generated, reference), mels):
        write_wav(wave, audio.sample_rate, root / f"{stem}-{label}.wav")
        write_mel_png(mel, audio, (low, high), root / f"{stem}-{label}-mel.png")
        clips.append(Clip(audio=f"{stem}-{label}.wav", mel=f"{stem}-{label}-mel.png",
                          seconds=len(wave) / audio.sample_rate))
    return Entry(artwork_id=item.artwork_id, title=item.title, artist=item.artist, image=f"{stem}-image.jpg",
                 generated=clips[0], reference=clips[1])


def write_thumbnail(source: Path, target: Path) -> None:
    """A JPEG at most THUMBNAIL_PIXELS on its long side."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            thumbnail = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise Art2MusError(f"{source}: cannot read the artwork image: {error}") from None
    thumbnail.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    thumbnail.save(target, format="JPEG", quality=85)


def write_wav(wave: np.ndarray, sample_rate: int, target: Path) -> None:
    """16-bit PCM WAV, which every browser plays."""
    import soundfile as sf

    sf.write(str(target), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")


def write_mel_png(mel: np.ndarray, audio: AudioParams, scale: tuple[float, float], target: Path) -> None:
    """A [frames, n_mels] log-mel as a PNG: time across, mel bins up, colours fixed by `scale`."""
    from matplotlib.figure import Figure  # a bare Figure draws with Agg and touches no global backend

    seconds = mel.shape[0] * audio.hop_length / audio.sample_rate
    figure = Figure(figsize=(4.0, 2.2), dpi=100, layout="constrained")
    axes = figure.subplots()
    picture = axes.imshow(mel.T, origin="lower", aspect="auto", cmap="magma", vmin=scale[0], vmax=scale[1],
                          extent=(0.0, seconds, 0.0, mel.shape[1]))
    axes.set_xlabel("time (s)")
    axes.set_ylabel("mel bin")
    figure.colorbar(picture, ax=axes, label="log-mel")
    figure.savefig(target, format="png", metadata={"Software": None})
