"""`art2mus generate`: one WAV per image; a bad image is reported by name and the others still generate."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from art2mus.data.sources import printable_name
from art2mus.errors import Art2MusError
from art2mus.io import atomic_path
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig
from art2mus.storage.s3 import S3Settings, require_credentials
from art2mus.workspace import MODEL_FILE, tracking_uri

logger = logging.getLogger(__name__)


@dataclass
class GenerationReport:
    written: list[Path]
    failed: dict[str, str]  # image path -> why


MODEL_URI_SCHEMES = ("runs:/", "models:/", "s3://")
ACCEPTED_MODELS = ("a model folder, runs:/<run id>/<path>, models:/<name>@<alias> or /<version>, "
                   "s3://<bucket>/<path>")


def resolve_model_dir(model: str) -> Path:
    """A packaged model folder from a local path or a URI MLflow fetches (runs:/..., models:/..., s3://...)."""
    path = Path(model)
    if path.is_dir():
        return path
    scheme = next((prefix for prefix in MODEL_URI_SCHEMES if model.startswith(prefix)), None)
    if scheme is None and ":/" not in model and ":" not in model.split("/")[0]:
        raise Art2MusError(f"{model}: no such model folder (a model is {ACCEPTED_MODELS})")
    if scheme is None or not model[len(scheme):].strip("/"):
        raise Art2MusError(f"{model}: not a model folder or a supported URI; a model is {ACCEPTED_MODELS}")
    if model.startswith("s3://"):  # MLflow hands it to boto3: fail fast without credentials
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL")  # where MLflow's S3 artifact store looks
        require_credentials(S3Settings.from_env(endpoint), model)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    except Exception as error:  # MLflow raises several unrelated types for a bad URI
        raise Art2MusError(f"{model}: cannot fetch the model: {error}") from None
    found = sorted(local.rglob(MODEL_FILE))
    if not found:
        raise Art2MusError(f"{model}: the artifacts hold no art2mus model ({MODEL_FILE})")
    return found[0].parent


def shown_path(path: Path | str) -> str:
    """A path fit for one line of output: control characters (a newline in a file name) escaped."""
    text = printable_name(str(path))
    return text if text.isprintable() else repr(text)[1:-1]


def check_output_dir(out_dir: Path) -> None:
    """`out_dir` is a folder this process can write in (created if missing), or Art2MusError saying why not.

    Checked before the model loads, so a bad `-o` fails in a second rather than after the whole batch."""
    shown = shown_path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise Art2MusError(f"{shown}: is a file, not a folder (-o names the folder for the WAV files)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Art2MusError(f"{shown}: cannot create the output folder ({error.strerror or error})") from None
    try:
        handle, probe = tempfile.mkstemp(dir=out_dir, prefix=".art2mus-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise Art2MusError(f"{shown}: cannot write in the output folder ({error.strerror or error}); "
                           "choose another with -o") from None


def open_image(path: Path):
    """A decoded RGB image, or Art2MusError naming the file and the problem.

    An image over Pillow's pixel limit (`Image.MAX_IMAGE_PIXELS`, a decompression bomb) is refused from its
    header, before any pixel is decoded: Pillow's warning between one and two times the limit counts as
    the error it raises above."""
    from PIL import Image, UnidentifiedImageError

    shown = shown_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.convert("RGB")
    except FileNotFoundError:
        raise Art2MusError(f"{shown}: no such file") from None
    except UnidentifiedImageError:
        raise Art2MusError(f"{shown}: not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise Art2MusError(f"{shown}: too many pixels to decode safely, a possible decompression bomb "
                           f"({type(error).__name__}: {error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise Art2MusError(f"{shown}: corrupt or truncated image ({error})") from None


def output_names(paths: list[Path]) -> list[str]:
    """`<stem>.wav` per image, numbered when two images share a stem."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(f"{path.stem}.wav" if count == 0 else f"{path.stem}-{count + 1}.wav")
    return names


def write_wav(wave: np.ndarray, sample_rate: int, path: Path) -> None:
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(wave, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")


def generate_files(images: list[Path], out_dir: Path, model: str, config: GenerationConfig) -> GenerationReport:
    """Generate for every readable image into `out_dir`; unreadable ones are listed with why."""
    check_output_dir(out_dir)
    pipeline = Art2MusPipeline.from_pretrained(resolve_model_dir(model))
    loaded, kept, failed = [], [], {}
    for path, name in zip(images, output_names(images)):
        try:
            loaded.append(open_image(path))
            kept.append(name)
        except Art2MusError as error:
            failed[str(path)] = str(error)
            logger.error("generate: %s", error)
    written = []
    if loaded:
        for name, wave in zip(kept, pipeline(loaded, config)):
            write_wav(wave, pipeline.sample_rate, out_dir / name)
            written.append(out_dir / name)
    return GenerationReport(written=written, failed=failed)
