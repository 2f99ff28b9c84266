"""Reading artworks and tracks for embedding: content checked against the manifest, failures as reasons."""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from art2mus.config import AudioParams

RESAMPLE_MARGIN_SECONDS = 0.1  # read past the crop so the resampler sees real signal at its end


class MediaError(Exception):
    """A file that cannot be embedded; the message is the reason reported in features_failed."""


def resolve_inside(root: Path, relpath: str) -> Path:
    """root / relpath, refusing paths that leave root."""
    root = root.resolve()
    path = (root / relpath).resolve()
    if path != root and root not in path.parents:
        raise MediaError("path escapes the source root")
    return path


def read_checked(root: Path, relpath: str, sha256: str) -> bytes:
    """The file's bytes, provided they are still what ingest hashed."""
    path = resolve_inside(root, relpath)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MediaError("file not found (re-run ingest)") from None
    except OSError as error:
        raise MediaError(f"cannot read file: {error.strerror or error}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise MediaError(f"file changed since ingest (sha256 {actual[:12]}, manifest {sha256[:12]}); re-run ingest")
    return data


def decode_image(data: bytes) -> Image.Image:
    """A fully decoded RGB image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise MediaError(f"image too large to decode safely: {error}") from None
    except Exception as error:  # PIL raises many types for corrupt data; every one means "cannot use"
        raise MediaError(f"cannot decode image: {type(error).__name__}: {error}") from None


def decode_audio_crop(data: bytes, audio: AudioParams) -> np.ndarray:
    """The model's crop (art2mus.models.audio.model_crop) as mono float32 at audio.sample_rate.

    Only the part of the file up to the crop's end is decoded: downmix, resample, then model_crop.
    """
    import soundfile as sf
    import torch
    import torchaudio

    from art2mus.models.audio import model_crop  # diffusers, transformers: only when decoding audio

    try:
        with sf.SoundFile(io.BytesIO(data)) as handle:
            rate = handle.samplerate
            stop = math.ceil((audio.crop_offset_seconds + audio.crop_seconds + RESAMPLE_MARGIN_SECONDS) * rate)
            samples = handle.read(stop, dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile/mpg123 errors of every kind mean "cannot use"
        raise MediaError(f"cannot decode audio: {type(error).__name__}: {error}") from None
    if samples.size == 0:
        raise MediaError("no audio frames")
    if not np.isfinite(samples).all():
        raise MediaError("audio holds NaN or infinite samples")
    mono = samples.mean(axis=1)
    if rate != audio.sample_rate:
        mono = torchaudio.functional.resample(torch.from_numpy(mono), rate, audio.sample_rate).numpy()
    if len(mono) <= round(audio.crop_offset_seconds * audio.sample_rate):
        raise MediaError(f"track ends before the crop starts ({len(mono) / audio.sample_rate:.2f} s)")
    return np.ascontiguousarray(model_crop(mono, audio), dtype=np.float32)
