"""Decode one file fully and report its properties, or why it cannot be used."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

AUDIO_BLOCK = 1 << 16
TRUNCATION_TOLERANCE = 0.99  # decoded / declared frames below this means the file is cut short
EXPECTED_AUDIO_FORMAT = {".mp3": "MP3", ".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}


def describe_start(path: Path) -> str:
    """The first bytes of a file, for 'not an image (starts with ...)' messages."""
    with open(path, "rb") as handle:
        return repr(handle.read(8))


def file_problem(path: Path) -> str | None:
    """Why a path holds nothing to decode (not a regular file, zero bytes), or None."""
    if not path.is_file():
        return "not a regular file"
    if path.stat().st_size == 0:
        return "zero-byte file"
    return None


def probe_image(path: Path) -> dict[str, Any]:
    """Width, height, mode and format of a fully decoded image, or {'error': reason}."""
    from PIL import Image, UnidentifiedImageError

    problem = file_problem(path)
    if problem:
        return {"error": problem}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decodes every pixel: catches truncation and corrupt data
                return {"width": image.width, "height": image.height, "mode": image.mode,
                        "format": image.format or ""}
    except UnidentifiedImageError:
        return {"error": f"not an image (starts with {describe_start(path)})"}
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return {"error": f"image too large to decode safely: {error}"}
    except (OSError, SyntaxError, ValueError) as error:
        return {"error": f"corrupt or truncated image: {error}"}


def probe_audio(path: Path) -> dict[str, Any]:
    """Duration, sample rate, channels and decoded frames of an audio file, or {'error': reason}."""
    import soundfile as sf

    problem = file_problem(path)
    if problem:
        return {"error": problem}
    try:
        with sf.SoundFile(path) as audio:
            expected = EXPECTED_AUDIO_FORMAT.get(path.suffix.lower())
            if expected and audio.format != expected:
                return {"error": f"wrong type: {audio.format} data in a {path.suffix} file"}
            declared = audio.frames
            decoded = 0
            finite = True
            while True:
                block = audio.read(AUDIO_BLOCK, dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                decoded += len(block)
                finite = finite and bool(np.isfinite(block).all())
            sample_rate, channels = audio.samplerate, audio.channels
    except sf.LibsndfileError:
        return {"error": f"not decodable audio (starts with {describe_start(path)})"}
    except (RuntimeError, OSError) as error:
        return {"error": f"corrupt audio: {error}"}
    if decoded == 0:
        return {"error": "no audio frames"}
    if declared > 0 and decoded < TRUNCATION_TOLERANCE * declared:
        return {"error": f"truncated: decoded {decoded / sample_rate:.2f} s of {declared / sample_rate:.2f} s declared"}
    if not finite:
        return {"error": "audio holds NaN or infinite samples"}
    return {"duration": decoded / sample_rate, "sample_rate": sample_rate, "channels": channels,
            "frames": decoded}
