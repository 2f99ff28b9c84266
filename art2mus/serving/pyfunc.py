"""The served model: an MLflow pyfunc that turns image bytes into a WAV.

Input: a DataFrame (or a dict / list of dicts) with a column `image` holding the image itself —
base64 text (what JSON clients send) or raw bytes (in-process callers) — and optional per-row
`seconds`, `seed`, `steps`, `guidance_scale`. Never a file path: a served model must not read the
server's files, so a value that looks like one is refused with a message saying what to send.
Output: one row per input row with `wav_base64` (16-bit PCM WAV), `sample_rate`, `seconds`,
`weights_sha256` and `model_identity`. Bad input raises MlflowException(INVALID_PARAMETER_VALUE),
which `mlflow models serve` answers with HTTP 400 and the message.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model"  # the packaged model folder's key in the pyfunc's artifacts
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_SECONDS = 30.0
MAX_STEPS = 200
MAX_GUIDANCE = 20.0
OPTIONAL_COLUMNS = ("seconds", "seed", "steps", "guidance_scale")
OUTPUT_COLUMNS = ("wav_base64", "sample_rate", "seconds", "weights_sha256", "model_identity")
PATH_PATTERN = re.compile(r"^(file:|~|\.{0,2}/|[A-Za-z]:[\\/])|\.(png|jpe?g|gif|bmp|tiff?|webp)$", re.IGNORECASE)
DATA_URI_PREFIX = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


class InvalidRequest(MlflowException):
    """A request the client must fix; the scoring server answers it with HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


@dataclass(frozen=True)
class Request:
    """One validated row: a decoded image and how to sample for it."""

    image: Any  # PIL.Image.Image, RGB
    seconds: float | None
    seed: int
    steps: int
    guidance_scale: float


def looks_like_path(text: str) -> bool:
    """A short one-line string that reads as a file name or location rather than image data."""
    text = text.strip()
    return 0 < len(text) < 4096 and "\n" not in text and bool(PATH_PATTERN.search(text))


# The first bytes of the image formats Pillow reads most: data that starts like this is an image
# (perhaps a truncated one), never a path, even when its base64 text starts with "/" (JPEG: "/9j/").
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                    b"RIFF", b"\x00\x00\x00\x0cjP  ")


def starts_like_an_image(data: bytes) -> bool:
    return data.startswith(IMAGE_SIGNATURES)


def path_error(text: str) -> InvalidRequest:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return InvalidRequest(f"image: {shown!r} looks like a file path; send the image's bytes instead "
                          "(base64-encoded in JSON): a served model never reads files on the server")


def image_bytes(value: Any) -> bytes:
    """The raw bytes of one `image` value: bytes as they are, text base64-decoded (strictly)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        raise InvalidRequest(f"image: expected base64 text or bytes, got {type(value).__name__}")
    text = DATA_URI_PREFIX.sub("", value.strip())
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        if looks_like_path(value):
            raise path_error(value) from None
        raise InvalidRequest("image: not valid base64 (send the image file's bytes, base64-encoded)") from None


def decode_image(value: Any):
    """A decoded RGB image from an `image` value, or InvalidRequest saying what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    data = image_bytes(value)
    if not data:
        raise InvalidRequest("image: empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequest(f"image: {len(data):,} bytes is more than the {MAX_IMAGE_BYTES:,} accepted")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # A path sent as text can survive base64 decoding as garbage bytes ("/abcdefghijk"); say what it
        # was, unless the bytes start like an image: then it is an image that cannot be decoded
        # (truncated, corrupt), whatever its base64 text looks like.
        text = value if isinstance(value, str) else data[:4096].decode("utf-8", errors="replace")
        if not starts_like_an_image(data) and looks_like_path(text):
            raise path_error(text) from None
        detail = "" if isinstance(error, UnidentifiedImageError) else f" ({error})"
        raise InvalidRequest(f"image: not a decodable image{detail}") from None


def optional_number(row: pd.Series, column: str, kind: type, default: Any) -> Any:
    """A row's optional setting: absent or null -> default; otherwise it must be a finite number."""
    value = row.get(column)
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return default
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidRequest(f"{column}: expected a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise InvalidRequest(f"{column}: expected a finite number, got {value!r}")
    if kind is int and float(value) != int(value):
        raise InvalidRequest(f"{column}: expected a whole number, got {value!r}")
    return kind(value)


def parse_row(row: pd.Series) -> Request:
    """Validate one input row (the limits keep one request from occupying the server for long)."""
    if "image" not in row.index:
        raise InvalidRequest("missing the `image` column (the image's bytes, base64-encoded in JSON)")
    seconds = optional_number(row, "seconds", float, None)
    steps = optional_number(row, "steps", int, 25)
    guidance = optional_number(row, "guidance_scale", float, 3.5)
    if seconds is not None and not 0 < seconds <= MAX_SECONDS:
        raise InvalidRequest(f"seconds: must be in (0, {MAX_SECONDS:g}], got {seconds:g}")
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidRequest(f"steps: must be in [1, {MAX_STEPS}], got {steps}")
    if not 0 <= guidance <= MAX_GUIDANCE:
        raise InvalidRequest(f"guidance_scale: must be in [0, {MAX_GUIDANCE:g}], got {guidance:g}")
    return Request(image=decode_image(row["image"]), seconds=seconds, seed=optional_number(row, "seed", int, 0),
                   steps=steps, guidance_scale=guidance)


def as_frame(model_input: Any) -> pd.DataFrame:
    """The request as a DataFrame, whichever of DataFrame / dict / list of dicts it came as."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        scalar = not any(isinstance(v, (list, tuple, np.ndarray, pd.Series)) for v in model_input.values())
        return pd.DataFrame([model_input] if scalar else model_input)
    if isinstance(model_input, list) and all(isinstance(item, dict) for item in model_input):
        return pd.DataFrame(model_input)
    raise InvalidRequest(f"expected a table with an `image` column, got {type(model_input).__name__}")


def parse_requests(model_input: Any) -> list[Request]:
    """Every row validated; the first bad one fails the request, named by its row number."""
    frame = as_frame(model_input)
    if frame.empty:
        raise InvalidRequest("no rows: send at least one image")
    requests = []
    for number, (_, row) in enumerate(frame.iterrows()):
        try:
            requests.append(parse_row(row))
        except InvalidRequest as error:
            raise InvalidRequest(f"row {number}: {error.message}") from None
    return requests


def encode_wav(wave: np.ndarray, sample_rate: int) -> str:
    """16-bit PCM WAV bytes of a waveform, base64-encoded."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Art2MusModel(PythonModel):
    """Image in, music out: wraps Art2MusPipeline built from the logged packaged-model folder."""

    def load_context(self, context) -> None:
        from art2mus.models.pipeline import Art2MusPipeline

        self.pipeline = Art2MusPipeline.from_pretrained(context.artifacts[MODEL_ARTIFACT])
        self.identity = str((context.model_config or {}).get("identity", ""))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One WAV per row; each row is generated on its own, so its audio depends only on that row."""
        from art2mus.models.pipeline import GenerationConfig

        rows = []
        sample_rate = self.pipeline.sample_rate
        for request in parse_requests(model_input):
            config = GenerationConfig(steps=request.steps, guidance_scale=request.guidance_scale,
                                      seconds=request.seconds, seed=request.seed, batch_size=1)
            wave = self.pipeline([request.image], config)[0]
            rows.append({"wav_base64": encode_wav(wave, sample_rate), "sample_rate": sample_rate,
                         "seconds": len(wave) / sample_rate,
                         "weights_sha256": str(self.pipeline.info.get("weights_sha256", "")),
                         "model_identity": self.identity})
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def model_signature():
    """Input: `image` (base64 text; raw bytes in-process) and optional settings; output: WAV + metadata."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", "image"), ColSpec("double", "seconds", required=False),
                     ColSpec("long", "seed", required=False), ColSpec("long", "steps", required=False),
                     ColSpec("double", "guidance_scale", required=False)])
    outputs = Schema([ColSpec("string", "wav_base64"), ColSpec("long", "sample_rate"), ColSpec("double", "seconds"),
                      ColSpec("string", "weights_sha256"), ColSpec("string", "model_identity")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def example_image_base64(size: int = 32) -> str:
    """A small PNG (a colour gradient), base64-encoded: the input example and the smoke test's image."""
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 128, np.uint8)],
                      axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def input_example() -> pd.DataFrame:
    """A minimal request (few steps, half a second): cheap enough to validate at logging time."""
    return pd.DataFrame({"image": [example_image_base64()], "seconds": [0.5], "seed": [0], "steps": [2],
                         "guidance_scale": [3.5]})
