"""The served model: an MLflow pyfunc that turns image bytes into a WAV.

Input: a DataFrame (or a dict / list of dicts) with a column `image` holding the image itself —
base64 text (what JSON clients send) or raw bytes (in-process callers) — and optional per-row
`seconds`, `seed`, `steps`, `guidance_scale`. Never a file path: a served model must not read the
server's files, so a value that looks like one is refused with a message saying what to send.
Output: one row per input row with `wav_base64` (16-bit PCM WAV), `sample_rate`, `seconds`,
`weights_sha256` and `model_identity`. Bad input raises MlflowException(INVALID_PARAMETER_VALUE),
which `mlflow models serve` answers with HTTP 400 and the message.

Limits (`ServingParams`, `serving:` in params.yaml, carried by the logged model's model_config since a
server has no params.yaml; a model logged without them gets the defaults): bytes per image, pixels per
image (read from the header: no pixel is decoded to refuse an image), rows per request, and each row's
settings; an answer over a limit names it (`serving.max_pixels`). A request is checked whole before any
work (row count, then every row's settings and image header), then its rows are decoded and generated one
at a time: one decoded image is alive at once, and none is kept after the request. A row whose header
passes but whose pixels cannot be decoded (cut short) is found when its turn comes and still fails the
whole request with a 400 naming the row: one answer, never partial results.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from art2mus.config import ServingParams

MODEL_ARTIFACT = "model"  # the packaged model folder's key in the pyfunc's artifacts
DEFAULT_LIMITS = ServingParams()
OPTIONAL_COLUMNS = ("seconds", "seed", "steps", "guidance_scale")
OUTPUT_COLUMNS = ("wav_base64", "sample_rate", "seconds", "weights_sha256", "model_identity")
PATH_PATTERN = re.compile(r"^(file:|~|\.{0,2}/|[A-Za-z]:[\\/])|\.(png|jpe?g|gif|bmp|tiff?|webp)$", re.IGNORECASE)
DATA_URI_PREFIX = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")  # the count in Pillow's DecompressionBombError message


class InvalidRequest(MlflowException):
    """A request the client must fix; the scoring server answers it with HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


@dataclass(frozen=True)
class Request:
    """One validated row: its image checked from its header (not decoded) and how to sample for it."""

    image: Any  # the row's `image` value as sent (base64 text or bytes): decoded only when the row is generated
    size: tuple[int, int]  # (width, height) from the image's header
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


def too_many_bytes(size: int, limits: ServingParams) -> InvalidRequest:
    return InvalidRequest(f"image: {size:,} bytes is more than serving.max_image_bytes ({limits.max_image_bytes:,})")


def image_bytes(value: Any, limits: ServingParams = DEFAULT_LIMITS) -> bytes:
    """The raw bytes of one `image` value: bytes as they are, text base64-decoded (strictly); at most
    `serving.max_image_bytes` of them (base64 text over it is refused before it is decoded)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif not isinstance(value, str):
        raise InvalidRequest(f"image: expected base64 text or bytes, got {type(value).__name__}")
    else:
        text = "".join(DATA_URI_PREFIX.sub("", value.strip()).split())
        if len(text) // 4 * 3 > limits.max_image_bytes:
            raise too_many_bytes(len(text) // 4 * 3, limits)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            if looks_like_path(value):
                raise path_error(value) from None
            raise InvalidRequest("image: not valid base64 (send the image file's bytes, base64-encoded)") from None
    if not data:
        raise InvalidRequest("image: empty")
    if len(data) > limits.max_image_bytes:
        raise too_many_bytes(len(data), limits)
    return data


def not_decodable(error: Exception, data: bytes, value: Any) -> InvalidRequest:
    """What to answer for bytes Pillow cannot open or decode."""
    from PIL import UnidentifiedImageError

    # A path sent as text can survive base64 decoding as garbage bytes ("/abcdefghijk"); say what it
    # was, unless the bytes start like an image: then it is an image that cannot be decoded
    # (truncated, corrupt), whatever its base64 text looks like.
    text = value if isinstance(value, str) else data[:4096].decode("utf-8", errors="replace")
    if not starts_like_an_image(data) and looks_like_path(text):
        return path_error(text)
    detail = "" if isinstance(error, UnidentifiedImageError) else f" ({error})"
    return InvalidRequest(f"image: not a decodable image{detail}")


def too_many_pixels(declared: str, limits: ServingParams) -> InvalidRequest:
    return InvalidRequest(f"image: {declared} is more than serving.max_pixels ({limits.max_pixels:,}): "
                          "send it scaled down")


@contextmanager
def opened_image(data: bytes, value: Any, limits: ServingParams) -> Iterator[Any]:
    """The image opened lazily (Pillow has read its header, not its pixels), its pixel count within
    `serving.max_pixels`. Pillow's own decompression-bomb check (it refuses to open an image of more than
    twice PIL.Image.MAX_IMAGE_PIXELS, which bounds max_pixels) is answered with the same limit."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        found = BOMB_PIXELS.search(str(error))
        raise too_many_pixels(f"{int(found[1]):,} pixels" if found else "its pixel count", limits) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise not_decodable(error, data, value) from None
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise too_many_pixels(f"{width:,} x {height:,} pixels", limits)
        yield image


def image_size(value: Any, limits: ServingParams = DEFAULT_LIMITS) -> tuple[int, int]:
    """(width, height) of an `image` value from its header, within the limits; no pixel is decoded."""
    data = image_bytes(value, limits)
    with opened_image(data, value, limits) as image:
        return image.size


def decode_image(value: Any, limits: ServingParams = DEFAULT_LIMITS):
    """A decoded RGB image from an `image` value, or InvalidRequest saying what is wrong with it (the
    limits are checked before any pixel is decoded)."""
    from PIL import Image

    data = image_bytes(value, limits)
    with opened_image(data, value, limits) as image:
        try:
            image.load()
            return image.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise not_decodable(error, data, value) from None


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


def parse_row(row: pd.Series, limits: ServingParams = DEFAULT_LIMITS) -> Request:
    """Validate one input row, its image from its header only (the limits keep one request from
    occupying the server for long, or its memory)."""
    if "image" not in row.index:
        raise InvalidRequest("missing the `image` column (the image's bytes, base64-encoded in JSON)")
    seconds = optional_number(row, "seconds", float, None)
    steps = optional_number(row, "steps", int, 25)
    guidance = optional_number(row, "guidance_scale", float, 3.5)
    if seconds is not None and not 0 < seconds <= limits.max_seconds:
        raise InvalidRequest(f"seconds: must be in (0, {limits.max_seconds:g}], got {seconds:g} (serving.max_seconds)")
    if not 1 <= steps <= limits.max_steps:
        raise InvalidRequest(f"steps: must be in [1, {limits.max_steps}], got {steps} (serving.max_steps)")
    if not 0 <= guidance <= limits.max_guidance_scale:
        raise InvalidRequest(f"guidance_scale: must be in [0, {limits.max_guidance_scale:g}], got {guidance:g} "
                             "(serving.max_guidance_scale)")
    return Request(image=row["image"], size=image_size(row["image"], limits),
                   seconds=seconds, seed=optional_number(row, "seed", int, 0), steps=steps, guidance_scale=guidance)


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


def parse_requests(model_input: Any, limits: ServingParams = DEFAULT_LIMITS) -> list[Request]:
    """Every row validated, no image decoded (its header is read); the row count is checked first, then
    the first bad row fails the request, named by its row number."""
    frame = as_frame(model_input)
    if frame.empty:
        raise InvalidRequest("no rows: send at least one image")
    if len(frame) > limits.max_rows:
        raise InvalidRequest(f"{len(frame):,} rows is more than serving.max_rows ({limits.max_rows}): "
                             f"send at most {limits.max_rows} images per request")
    requests = []
    for number, (_, row) in enumerate(frame.iterrows()):
        try:
            requests.append(parse_row(row, limits))
        except InvalidRequest as error:
            raise InvalidRequest(f"row {number}: {error.message}") from None
    return requests


def decode_row(number: int, request: Request, limits: ServingParams):
    """The decoded image of a checked row (an error names the row, as parse_requests does)."""
    try:
        return decode_image(request.image, limits)
    except InvalidRequest as error:
        raise InvalidRequest(f"row {number}: {error.message}") from None


def release_memory() -> None:
    """Give the memory a request freed back to the system (glibc): freed image buffers otherwise stay in the
    heap and the server's RSS at its high-water mark. No full gc.collect(): with torch loaded it takes ~0.4 s,
    and nothing here is held by a reference cycle (a decoded image is a local of one `generate` call)."""
    if LIBC is not None:
        LIBC.malloc_trim(0)


def glibc():
    """The C library when it is glibc (it has malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


LIBC = glibc()


def encode_wav(wave: np.ndarray, sample_rate: int) -> str:
    """16-bit PCM WAV bytes of a waveform, base64-encoded."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Art2MusModel(PythonModel):
    """Image in, music out: wraps Art2MusPipeline built from the logged packaged-model folder."""

    def load_context(self, context) -> None:
        from art2mus.models.pipeline import Art2MusPipeline  # torch: only when serving, not when logging

        config = context.model_config or {}
        self.pipeline = Art2MusPipeline.from_pretrained(context.artifacts[MODEL_ARTIFACT])
        self.identity = str(config.get("identity", ""))
        self.limits = ServingParams.model_validate(config.get("serving") or {})  # none logged: the defaults

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One WAV per row; each row is generated on its own, so its audio depends only on that row.
        The whole request is checked first; then each row is decoded, generated and let go in turn."""
        requests = parse_requests(model_input, self.limits)
        try:
            rows = [self.generate(number, request) for number, request in enumerate(requests)]
        finally:
            release_memory()
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))

    def generate(self, number: int, request: Request) -> dict[str, Any]:
        """One output row; the decoded image lives only in this call."""
        from art2mus.models.pipeline import GenerationConfig  # torch: only when serving

        config = GenerationConfig(steps=request.steps, guidance_scale=request.guidance_scale,
                                  seconds=request.seconds, seed=request.seed, batch_size=1)
        wave = self.pipeline([decode_row(number, request, self.limits)], config)[0]
        sample_rate = self.pipeline.sample_rate
        return {"wav_base64": encode_wav(wave, sample_rate), "sample_rate": sample_rate,
                "seconds": len(wave) / sample_rate, "weights_sha256": str(self.pipeline.info.get("weights_sha256", "")),
                "model_identity": self.identity}


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
