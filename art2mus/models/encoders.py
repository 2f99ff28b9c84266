"""Frozen image encoders and audio embedders: CLIP, CLAP, ImageBind and tiny ones built in code.

Every encoder is in eval mode, runs under `torch.inference_mode`, is deterministic and batches its
inputs. Embeddings are what each model's own API returns, float32 on the CPU; art2mus adds no
normalisation, so callers normalise when they want cosines. (CLIP's `image_embeds` and the tiny
ones are unnormalised; transformers 5's `ClapModel.get_audio_features` is unit-norm; ImageBind's
vision output is unit-norm and its audio output is unit-norm x 20 averaged over three clips.)

Kinds (`EncoderSpec.name`):
- `tiny`: real architectures at toy sizes, built from configs in code with a fixed seed (no
  downloads), or loaded from a directory written by their `save_pretrained`.
  Image: a `CLIPVisionModelWithProjection` (64 px, patch 8, width 256, 2 layers, 256-d
  `image_embeds`) with its `CLIPImageProcessor`. Audio: a `ResNetModel` (2 stages, 32/64 channels)
  on a per-clip standardised log-mel (16 kHz, n_fft 1024, hop 160, 64 mels, fmax 8 kHz), pooled by
  statistics over the last feature map (mean, std and mean |time difference| per channel, 192-d).
  Random weights keep what the sample plants: linear probes recover palette/register,
  texture/tempo and composition/timbre from these embeddings (tests/model/test_encoders.py).
- `clip` (image): `CLIPVisionModelWithProjection` + `CLIPImageProcessor` from a hub id (default
  openai/clip-vit-large-patch14) or a local directory; `image_embeds`.
- `clap` (audio): `ClapModel.get_audio_features` + `ClapFeatureExtractor` from a hub id (default
  laion/clap-htsat-unfused) or a local directory.
- `imagebind` (image and audio, shared space "imagebind"): Meta's ImageBind through the
  `imagebind-unofficial` package (`pip install 'art2mus[imagebind]'`). ImageBind's code and weights
  are licensed CC BY-NC-SA 4.0: non-commercial use only, share-alike. Weights: a local `.pth`
  state dict (with an optional `<name>.json` beside it holding `ImageBindModel` keyword arguments,
  for non-huge sizes) or, with an empty source, the official imagebind_huge checkpoint.

Encoder ids name the weights exactly: `<kind>:<hub id>@<revision>` for hub ids, `<kind>:local@<hash>`
(content hash of the files) for local paths, `tiny:<hash of config, seed and library versions>`
for tiny models built in code, `imagebind:imagebind_huge` for the official checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from art2mus.config import EncoderSpec
from art2mus.errors import Art2MusError

logger = logging.getLogger(__name__)

IMAGE_KINDS = ("tiny", "clip", "imagebind")
AUDIO_KINDS = ("tiny", "clap", "imagebind")
DEFAULT_SOURCES = {"clip": "openai/clip-vit-large-patch14", "clap": "laion/clap-htsat-unfused"}
SHARED_SPACES = {"imagebind": "imagebind"}  # kind -> the joint image/audio space it declares

TINY_SEED = 0
TINY_VERSION = 1  # bump when the tiny architectures or their pooling change
TINY_IMAGE_CONFIG = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 8,
    "projection_dim": 256,
}
TINY_IMAGE_PROCESSOR = {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}
TINY_AUDIO_CONFIG = {
    "num_channels": 1,
    "embedding_size": 32,
    "hidden_sizes": [32, 64],
    "depths": [1, 1],
    "layer_type": "basic",
}
TINY_LOG_MEL = {"sample_rate": 16000, "n_fft": 1024, "hop_length": 160, "n_mels": 64, "f_min": 0.0, "f_max": 8000.0}
LOG_MEL_KEY = "art2mus_log_mel"  # where a tiny audio embedder's config.json keeps its front-end

IMAGEBIND_HUGE_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
IMAGEBIND_IMAGE_SIZE = 224
IMAGEBIND_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGEBIND_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGEBIND_AUDIO = {  # imagebind/data.py load_and_transform_audio_data defaults
    "sample_rate": 16000,
    "num_mel_bins": 128,
    "target_length": 204,
    "clip_duration": 2,
    "clips_per_video": 3,
    "mean": -4.268,
    "std": 9.138,
}
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


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
    from art2mus.io import sha256_file

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


def tiny_digest(role: str, seed: int = TINY_SEED) -> str:
    """Hash of everything that determines a tiny model built in code."""
    import transformers

    if role == "image":
        recipe = {"arch": "CLIPVisionModelWithProjection", "config": TINY_IMAGE_CONFIG,
                  "processor": TINY_IMAGE_PROCESSOR}
    else:
        recipe = {"arch": "ResNetModel+stats-pooling", "config": TINY_AUDIO_CONFIG, "log_mel": TINY_LOG_MEL}
    recipe.update(seed=seed, version=TINY_VERSION, torch=torch.__version__.split("+")[0],
                  transformers=transformers.__version__)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()


def check_kind(spec: EncoderSpec, role: str) -> None:
    kinds = IMAGE_KINDS if role == "image" else AUDIO_KINDS
    if spec.name not in kinds:
        what = "image encoder" if role == "image" else "audio embedder"
        raise Art2MusError(f"unknown {what} kind {spec.name!r}; choose one of: {', '.join(kinds)}")


def encoder_id_for(spec: EncoderSpec, role: str) -> str:
    """The id of the weights `spec` names, computed without loading them ("image" or "audio" role)."""
    check_kind(spec, role)
    local = resolve_local(spec.source, spec.name, role)
    if local is not None:
        return f"{spec.name}:local@{local_digest(local)[:16]}"
    if spec.name == "tiny":
        if spec.source:
            raise Art2MusError(f"tiny {role} model {spec.source!r} not found: tiny models load from local paths only")
        return f"tiny:{tiny_digest(role)[:16]}"
    if spec.name == "imagebind":
        if spec.source:
            raise Art2MusError(f"imagebind weights {spec.source!r} not found: pass a local .pth path")
        return "imagebind:imagebind_huge"
    return f"{spec.name}:{spec.source or DEFAULT_SOURCES[spec.name]}@{spec.revision}"


def shared_space_for(spec: EncoderSpec) -> str | None:
    """The joint image/audio space an encoder kind declares (None: its embeddings are not comparable)."""
    return SHARED_SPACES.get(spec.name)


# ---- small helpers ------------------------------------------------------------------------------
def offline_error(kind: str, source: str, role: str, error: Exception) -> Art2MusError:
    return Art2MusError(
        f"weights for {kind} {source!r} not found locally and cannot be downloaded here; pass a local path "
        f"in {source_field(role)} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    )


def seeded_build(build: Callable[[], Any], seed: int = TINY_SEED) -> Any:
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


def load_hf(loader: Any, source: str, revision: str, kind: str, role: str, local: bool) -> Any:
    """`loader.from_pretrained`, turning "not there and no network" into a clear error."""
    try:
        if local:
            return loader.from_pretrained(source)
        return loader.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as error:
        if local:
            raise Art2MusError(f"{source} is not a saved {kind} model: {error}") from None
        raise offline_error(kind, source, role, error) from None


# ---- CLIP (and the tiny image encoder, which is a tiny CLIP) ------------------------------------
class ClipImageEncoder:
    """`CLIPVisionModelWithProjection` + its `CLIPImageProcessor`; returns `image_embeds`."""

    shared_space: str | None = None

    def __init__(self, model: Any, processor: Any, encoder_id: str, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.encoder_id = encoder_id
        self.device = device
        self.dim = int(model.config.projection_dim)

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            return torch.empty(0, self.dim)
        pixels = self.processor(images=rgb(images), return_tensors="pt")["pixel_values"]
        output = self.model(pixel_values=pixels.to(self.device, dtype=self.model.dtype))
        return output.image_embeds.float().cpu()

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)


def build_tiny_image_encoder(seed: int = TINY_SEED, device: str = "cpu") -> ClipImageEncoder:
    """The tiny image encoder: a CLIP vision tower at toy size, seeded (same weights every time)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    model = seeded_build(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_IMAGE_CONFIG)), seed)
    processor = CLIPImageProcessor(**TINY_IMAGE_PROCESSOR)
    return ClipImageEncoder(model, processor, f"tiny:{tiny_digest('image', seed)[:16]}", device)


def load_clip(spec: EncoderSpec, encoder_id: str, device: str) -> ClipImageEncoder:
    """A CLIP vision tower (or a saved tiny one) from a local directory or the hub."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    local = resolve_local(spec.source, spec.name, "image")
    source = str(local) if local else (spec.source or DEFAULT_SOURCES["clip"])
    model = load_hf(CLIPVisionModelWithProjection, source, spec.revision, spec.name, "image", local is not None)
    processor = load_hf(CLIPImageProcessor, source, spec.revision, spec.name, "image", local is not None)
    return ClipImageEncoder(model, processor, encoder_id, device)


# ---- tiny audio embedder: log-mel + ResNet + statistics pooling ---------------------------------
class TinyAudioEmbedder:
    """A `ResNetModel` on a standardised log-mel, statistics-pooled (mean, std, mean |d/dt|)."""

    shared_space: str | None = None

    def __init__(self, model: Any, encoder_id: str, device: str = "cpu") -> None:
        import torchaudio

        front_end = getattr(model.config, LOG_MEL_KEY, None)
        if not isinstance(front_end, dict):
            raise Art2MusError(f"not a tiny audio embedder: its config.json has no {LOG_MEL_KEY!r}")
        self.log_mel = dict(front_end)
        self.sample_rate = int(front_end["sample_rate"])
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate, n_fft=int(front_end["n_fft"]), hop_length=int(front_end["hop_length"]),
            n_mels=int(front_end["n_mels"]), f_min=float(front_end["f_min"]), f_max=float(front_end["f_max"]),
        )
        self.model = model.to(device).eval()
        self.encoder_id = encoder_id
        self.device = device
        self.dim = 3 * int(model.config.hidden_sizes[-1])

    def features(self, wave: np.ndarray) -> torch.Tensor:
        """[1, n_mels, frames] per-clip standardised log-mel of one waveform."""
        mel = torch.log(torch.clamp(self.mel(torch.from_numpy(wave)), min=1e-5))
        return ((mel - mel.mean()) / (mel.std() + 1e-5)).unsqueeze(0)

    @torch.inference_mode()
    def embed_audio(self, waveforms: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        embeddings = torch.empty(len(waveforms), self.dim)
        inputs = [self.features(resample(wave, sample_rate, self.sample_rate)) for wave in waveforms]
        by_length: dict[int, list[int]] = {}
        for index, item in enumerate(inputs):
            by_length.setdefault(item.shape[-1], []).append(index)
        for indices in by_length.values():
            batch = torch.stack([inputs[index] for index in indices]).to(self.device)
            hidden = self.model(pixel_values=batch).last_hidden_state.float()  # [B, C, F', T']
            pooled = torch.cat([
                hidden.mean(dim=(2, 3)),
                hidden.std(dim=(2, 3)),
                hidden.diff(dim=3).abs().mean(dim=(2, 3)),
            ], dim=1)
            embeddings[indices] = pooled.cpu()
        return embeddings

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)


def build_tiny_audio_embedder(seed: int = TINY_SEED, device: str = "cpu") -> TinyAudioEmbedder:
    """The tiny audio embedder: a toy ResNet on log-mels, seeded (same weights every time)."""
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(**TINY_AUDIO_CONFIG, **{LOG_MEL_KEY: dict(TINY_LOG_MEL)})
    model = seeded_build(lambda: ResNetModel(config), seed)
    return TinyAudioEmbedder(model, f"tiny:{tiny_digest('audio', seed)[:16]}", device)


def load_tiny_audio(path: Path, encoder_id: str, device: str) -> TinyAudioEmbedder:
    from transformers import ResNetModel

    model = load_hf(ResNetModel, str(path), "main", "tiny", "audio", local=True)
    return TinyAudioEmbedder(model, encoder_id, device)


# ---- CLAP ---------------------------------------------------------------------------------------
class ClapAudioEmbedder:
    """`ClapModel.get_audio_features` on `ClapFeatureExtractor` mels, deterministic crops."""

    shared_space: str | None = None

    def __init__(self, model: Any, feature_extractor: Any, encoder_id: str, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.feature_extractor = feature_extractor
        self.encoder_id = encoder_id
        self.device = device
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.dim = int(model.config.projection_dim)
        self.fusion = bool(getattr(model.config.audio_config, "enable_fusion", False))

    @torch.inference_mode()
    def embed_audio(self, waveforms: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        if not waveforms:
            return torch.empty(0, self.dim)
        limit = int(self.feature_extractor.nb_max_samples)
        # Clips longer than the extractor's window are cut at its length here: its own cut is random.
        waves = [resample(wave, sample_rate, self.sample_rate)[:limit] for wave in waveforms]
        inputs = self.feature_extractor(
            waves, sampling_rate=self.sample_rate, truncation="fusion" if self.fusion else "rand_trunc",
            return_tensors="pt",
        )
        features = inputs["input_features"].to(self.device, dtype=self.model.dtype)
        is_longer = torch.zeros(len(waves), 1, dtype=torch.bool, device=self.device)  # its random pick, undone
        output = self.model.get_audio_features(input_features=features, is_longer=is_longer)
        embeddings = output.pooler_output if hasattr(output, "pooler_output") else output
        return embeddings.float().cpu()

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)


def load_clap(spec: EncoderSpec, encoder_id: str, device: str) -> ClapAudioEmbedder:
    from transformers import ClapFeatureExtractor, ClapModel

    local = resolve_local(spec.source, spec.name, "audio")
    source = str(local) if local else (spec.source or DEFAULT_SOURCES["clap"])
    model = load_hf(ClapModel, source, spec.revision, spec.name, "audio", local is not None)
    feature_extractor = load_hf(ClapFeatureExtractor, source, spec.revision, spec.name, "audio", local is not None)
    return ClapAudioEmbedder(model, feature_extractor, encoder_id, device)


# ---- ImageBind ----------------------------------------------------------------------------------
def import_imagebind() -> Any:
    """ImageBind's model module, with the shim it needs on current torchvision.

    pytorchvideo 0.1.5 imports `torchvision.transforms.functional_tensor`, which torchvision
    renamed to `_functional_tensor`; ImageBind imports `pkg_resources` (setuptools < 81).
    """
    if "torchvision.transforms.functional_tensor" not in sys.modules:
        try:
            import torchvision.transforms.functional_tensor  # noqa: F401
        except ImportError:
            from torchvision.transforms import _functional_tensor

            sys.modules["torchvision.transforms.functional_tensor"] = _functional_tensor
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from imagebind.models import imagebind_model
    except ImportError as error:
        hint = " (it needs pkg_resources: setuptools<81)" if error.name == "pkg_resources" else ""
        raise Art2MusError(
            f"ImageBind is not installed{hint}: pip install -c constraints.txt -e '.[imagebind]' ({error})"
        ) from None
    return imagebind_model


def imagebind_checkpoint(spec: EncoderSpec, role: str) -> tuple[Path, dict[str, Any] | None]:
    """The .pth to load and the model's keyword arguments (None: imagebind_huge)."""
    local = resolve_local(spec.source, "imagebind", role)
    if local is not None:
        if local.is_dir():
            candidates = sorted(local.glob("*.pth"))
            if len(candidates) != 1:
                raise Art2MusError(f"{local}: expected exactly one .pth ImageBind checkpoint, found {len(candidates)}")
            local = candidates[0]
        companion = local.with_suffix(".json")
        kwargs = json.loads(companion.read_text(encoding="utf-8")) if companion.is_file() else None
        return local, kwargs
    legacy = Path(".checkpoints") / Path(IMAGEBIND_HUGE_URL).name  # where imagebind_huge() itself saves it
    if legacy.is_file():
        return legacy.resolve(), None
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = hub_dir / Path(IMAGEBIND_HUGE_URL).name
    if not cached.is_file():
        try:
            hub_dir.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(IMAGEBIND_HUGE_URL, str(cached), progress=False)
        except Exception as error:  # URLError, HTTPError, OSError, timeouts: all mean "not here"
            raise offline_error("imagebind", IMAGEBIND_HUGE_URL, role, error) from None
    return cached, None


def load_imagebind_model(spec: EncoderSpec, role: str, device: str) -> Any:
    """ImageBindModel with the checkpoint's weights, keeping only the modality `role` needs."""
    imagebind_model = import_imagebind()
    path, kwargs = imagebind_checkpoint(spec, role)
    model = imagebind_model.ImageBindModel(**kwargs) if kwargs else imagebind_model.imagebind_huge(pretrained=False)
    try:
        try:  # memory-mapped: the huge checkpoint is not held twice in memory
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) checkpoint cannot be mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        del state
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise Art2MusError(f"{path}: not a matching ImageBind checkpoint: {str(error).splitlines()[0]}") from None
    keep = "vision" if role == "image" else "audio"
    for modules in (model.modality_preprocessors, model.modality_trunks, model.modality_heads,
                    model.modality_postprocessors):
        for name in [name for name in modules if name != keep]:
            del modules[name]
    return model.to(device).eval()


def save_imagebind(model: torch.nn.Module, model_kwargs: dict[str, Any] | None, path: str | Path) -> None:
    """Write an ImageBind state dict (and its constructor arguments beside it) for `load_*`."""
    from art2mus.io import atomic_path, write_json_atomic

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    if model_kwargs:
        write_json_atomic(model_kwargs, path.with_suffix(".json"))


def imagebind_dim(model: Any, modality: str) -> int:
    return int(model.modality_heads[modality][-1].out_features)


class ImageBindImageEncoder:
    """ImageBind's vision branch with its own preprocessing (bicubic 224, centre crop, CLIP norm)."""

    shared_space: str | None = "imagebind"

    def __init__(self, model: Any, encoder_id: str, device: str = "cpu") -> None:
        from torchvision import transforms

        self.model = model
        self.encoder_id = encoder_id
        self.device = device
        self.dim = imagebind_dim(model, "vision")
        self.transform = transforms.Compose([
            transforms.Resize(IMAGEBIND_IMAGE_SIZE, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(IMAGEBIND_IMAGE_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGEBIND_MEAN, std=IMAGEBIND_STD),
        ])

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            return torch.empty(0, self.dim)
        pixels = torch.stack([self.transform(image) for image in rgb(images)]).to(self.device)
        return self.model({"vision": pixels})["vision"].float().cpu()


class ImageBindAudioEmbedder:
    """ImageBind's audio branch: 3 clips of 2 s, 128-bin kaldi fbank, exactly as imagebind/data.py."""

    shared_space: str | None = "imagebind"
    sample_rate: int = IMAGEBIND_AUDIO["sample_rate"]

    def __init__(self, model: Any, encoder_id: str, device: str = "cpu") -> None:
        import_imagebind()  # its data helpers below need the shim
        self.model = model
        self.encoder_id = encoder_id
        self.device = device
        self.dim = imagebind_dim(model, "audio")

    def clips(self, wave: np.ndarray) -> torch.Tensor:
        """[clips, 1, mel bins, frames] for one 16 kHz waveform (imagebind.data's audio loop)."""
        from imagebind.data import get_clip_timepoints, waveform2melspec
        from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler

        settings = IMAGEBIND_AUDIO
        rate = settings["sample_rate"]
        waveform = torch.from_numpy(np.array(wave, dtype=np.float32)).unsqueeze(0)
        sampler = ConstantClipsPerVideoSampler(
            clip_duration=settings["clip_duration"], clips_per_video=settings["clips_per_video"]
        )
        melspecs = []
        for start, end in get_clip_timepoints(sampler, waveform.size(1) / rate):
            clip = waveform[:, int(start * rate): int(end * rate)]
            melspec = waveform2melspec(clip, rate, settings["num_mel_bins"], settings["target_length"])
            melspecs.append((melspec - settings["mean"]) / settings["std"])
        return torch.stack(melspecs)

    @torch.inference_mode()
    def embed_audio(self, waveforms: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        if not waveforms:
            return torch.empty(0, self.dim)
        batch = torch.stack([self.clips(resample(wave, sample_rate, self.sample_rate)) for wave in waveforms])
        return self.model({"audio": batch.to(self.device)})["audio"].float().cpu()


# ---- factories ----------------------------------------------------------------------------------
def load_image_encoder(spec: EncoderSpec, device: str = "cpu") -> ImageEncoder:
    """The image encoder `spec` names, ready to embed (weights from a local path or the hub)."""
    encoder_id = encoder_id_for(spec, "image")
    if spec.name == "tiny" and not spec.source:
        return build_tiny_image_encoder(device=device)
    if spec.name in ("tiny", "clip"):  # a saved tiny encoder is a (small) CLIP vision tower
        return load_clip(spec, encoder_id, device)
    return ImageBindImageEncoder(load_imagebind_model(spec, "image", device), encoder_id, device)


def load_audio_embedder(spec: EncoderSpec, device: str = "cpu") -> AudioEmbedder:
    """The audio embedder `spec` names, ready to embed (weights from a local path or the hub)."""
    encoder_id = encoder_id_for(spec, "audio")
    if spec.name == "tiny" and not spec.source:
        return build_tiny_audio_embedder(device=device)
    if spec.name == "tiny":
        return load_tiny_audio(resolve_local(spec.source, "tiny", "audio"), encoder_id, device)
    if spec.name == "clap":
        return load_clap(spec, encoder_id, device)
    return ImageBindAudioEmbedder(load_imagebind_model(spec, "audio", device), encoder_id, device)


@dataclass(frozen=True)
class EncoderRef:
    """An encoder named by params, identified without loading it; `load()` builds it."""

    spec: EncoderSpec
    role: str  # image | audio
    device: str = "cpu"

    @property
    def encoder_id(self) -> str:
        return encoder_id_for(self.spec, self.role)

    @property
    def shared_space(self) -> str | None:
        return shared_space_for(self.spec)

    def load(self) -> ImageEncoder | AudioEmbedder:
        loader = load_image_encoder if self.role == "image" else load_audio_embedder
        return loader(self.spec, self.device)


def default_device() -> str:
    """cuda when a GPU is visible (and not disabled by ART2MUS_DEVICE), else cpu."""
    explicit = os.environ.get("ART2MUS_DEVICE")
    if explicit:
        return explicit
    return "cuda" if torch.cuda.is_available() else "cpu"
