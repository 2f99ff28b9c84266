"""What every encoder family shares: the two protocols, the kinds, weight identity and small helpers.

Every encoder is in eval mode, runs under `torch.inference_mode`, is deterministic and batches its
inputs. Embeddings are what each model's own API returns, float32 on the CPU whatever device the
model runs on; art2mus adds no normalisation, so callers normalise when they want cosines.

Weights load in float32 whatever a saved config says (transformers 5 would otherwise load a
config's `dtype`/`torch_dtype`, e.g. float64). A loader's `device` is a torch device name or
"auto" (`default_device()`: cuda when a GPU is visible, else cpu).

Imports go one way: the family modules (clip, tiny, clap, imagebind) import from here (tiny also
from clip: the tiny image encoder is a CLIP), never from the package; the package `__init__`
imports them all and holds what dispatches over kinds (encoder ids, the factories).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from art2mus.config import EncoderSpec
from art2mus.errors import Art2MusError
from art2mus.io import sha256_file
from art2mus.models.quiet import quiet_loading

IMAGE_KINDS = ("tiny", "clip", "imagebind")
AUDIO_KINDS = ("tiny", "clap", "imagebind")
DEFAULT_SOURCES = {"clip": "openai/clip-vit-large-patch14", "clap": "laion/clap-htsat-unfused"}
SHARED_SPACES = {"imagebind": "imagebind"}  # kind -> the joint image/audio space it declares
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
WEIGHT_DTYPE = torch.float32  # every model loads in this dtype, whatever its config says


class ImageEncoder(Protocol):
    """Images in, one embedding per image out."""

    encoder_id: str
    dim: int
    shared_space: str | None

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor: ...


class AudioEmbedder(Protocol):
    """Mono waveforms in, one embedding per waveform out."""

    encoder_id: str
    dim: int
    shared_space: str | None
    sample_rate: int

    def embed_audio(self, waveforms: list[np.ndarray], sample_rate: int) -> torch.Tensor: ...


# ---- identity: which weights, without loading them ---------------------------------------------
def source_field(role: str) -> str:
    """The params.yaml key a user edits to point an encoder at local weights."""
    return f"features.{'image_encoder' if role == 'image' else 'audio_embedder'}.source"


def looks_like_path(source: str) -> bool:
    """True for sources that can only be a path (a hub id is `name` or `org/name`)."""
    return (
        source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or "\\" in source
        or source.endswith(WEIGHT_SUFFIXES)
    )


def resolve_local(source: str, kind: str, role: str) -> Path | None:
    """The local path `source` names, None for a hub id; a path that does not exist is an error."""
    if not source:
        return None
    path = Path(source).expanduser()
    if path.exists():
        return path.resolve()
    if looks_like_path(source):
        raise Art2MusError(
            f"{kind} weights not found: {source} does not exist (set {source_field(role)} to an existing path)"
        )
    return None


def weight_files(path: Path) -> list[Path]:
    """The files that make up a local model: the file itself, or every visible file under a directory."""
    if path.is_file():
        companion = path.with_suffix(".json")
        return [path, companion] if companion.is_file() and companion != path else [path]
    return sorted(
        item for item in path.rglob("*")
        if item.is_file() and not any(part.startswith(".") for part in item.relative_to(path).parts)
    )


@functools.lru_cache(maxsize=32)
def digest_files(files: tuple[tuple[str, str, int, int], ...]) -> str:
    """Content hash over (name, file hash) pairs; cached per (path, size, mtime) within a process."""
    digest = hashlib.sha256()
    for name, path, _size, _mtime in files:
        digest.update(name.encode("utf-8") + b"\0" + sha256_file(path).encode("ascii") + b"\n")
    return digest.hexdigest()


def local_digest(path: Path) -> str:
    """Content hash of a local model (file or directory)."""
    files = []
    for item in weight_files(path):
        stat = item.stat()
        name = item.name if path.is_file() else item.relative_to(path).as_posix()
        files.append((name, str(item), stat.st_size, stat.st_mtime_ns))
    if not files:
        raise Art2MusError(f"{path} holds no model files")
    return digest_files(tuple(files))


def check_kind(spec: EncoderSpec, role: str) -> None:
    kinds = IMAGE_KINDS if role == "image" else AUDIO_KINDS
    if spec.name not in kinds:
        what = "image encoder" if role == "image" else "audio embedder"
        raise Art2MusError(f"unknown {what} kind {spec.name!r}; choose one of: {', '.join(kinds)}")


def shared_space_for(spec: EncoderSpec) -> str | None:
    """The joint image/audio space an encoder kind declares (None: its embeddings are not comparable)."""
    return SHARED_SPACES.get(spec.name)


# ---- devices ------------------------------------------------------------------------------------
def default_device() -> str:
    """cuda when a GPU is visible (and not disabled by ART2MUS_DEVICE), else cpu."""
    explicit = os.environ.get("ART2MUS_DEVICE")
    if explicit and explicit != "auto":
        return explicit
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str) -> str:
    """A loader's `device`: "auto" is `default_device()`, anything else is used as given."""
    return default_device() if device == "auto" else device


# ---- small helpers ------------------------------------------------------------------------------
def offline_error(kind: str, source: str, role: str, error: Exception) -> Art2MusError:
    return Art2MusError(
        f"weights for {kind} {source!r} not found locally and cannot be downloaded here; pass a local path "
        f"in {source_field(role)} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    )


def seeded_build(build: Callable[[], Any], seed: int = 0) -> Any:
    """Call `build()` with torch's CPU generator seeded, leaving the caller's random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 waveform at `to_rate` (torchaudio's band-limited sinc resampler)."""
    wave = np.asarray(waveform, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform, got shape {wave.shape}")
    if from_rate == to_rate:
        return wave
    import torchaudio

    return torchaudio.functional.resample(torch.from_numpy(wave), from_rate, to_rate).numpy()


def rgb(images: list[Image.Image]) -> list[Image.Image]:
    return [image if image.mode == "RGB" else image.convert("RGB") for image in images]


def load_hf(loader: Any, source: str, revision: str, kind: str, role: str, local: bool, **kwargs: Any) -> Any:
    """`loader.from_pretrained(source, **kwargs)`, turning "not there and no network" into a clear error.

    Models pass `dtype=WEIGHT_DTYPE`; processors and feature extractors take no dtype.
    """
    try:
        with quiet_loading():
            if local:
                return loader.from_pretrained(source, **kwargs)
            return loader.from_pretrained(source, revision=revision, **kwargs)
    except (OSError, ValueError) as error:
        if local:
            raise Art2MusError(f"{source} is not a saved {kind} model: {error}") from None
        raise offline_error(kind, source, role, error) from None


def load_hf_model(loader: Any, source: str, revision: str, kind: str, role: str, local: bool) -> Any:
    """A transformers model in float32 (`WEIGHT_DTYPE`), whatever dtype its config.json names."""
    return load_hf(loader, source, revision, kind, role, local, dtype=WEIGHT_DTYPE)


def load_hf_with_preprocessor(model_class: Any, preprocessor_class: Any, spec: EncoderSpec, role: str,
                              default_source: str) -> tuple[Any, Any]:
    """A model (float32) and its processor or feature extractor, from `spec`'s local directory or hub id."""
    local = resolve_local(spec.source, spec.name, role)
    source = str(local) if local else (spec.source or default_source)
    model = load_hf_model(model_class, source, spec.revision, spec.name, role, local is not None)
    preprocessor = load_hf(preprocessor_class, source, spec.revision, spec.name, role, local is not None)
    return model, preprocessor
