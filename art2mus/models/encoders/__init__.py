"""Frozen image encoders and audio embedders: CLIP, CLAP, ImageBind and tiny ones built in code.

Every encoder is in eval mode, runs under `torch.inference_mode`, is deterministic and batches its
inputs. Embeddings are what each model's own API returns, float32 on the CPU; art2mus adds no
normalisation, so callers normalise when they want cosines. (CLIP's `image_embeds` and the tiny
ones are unnormalised; transformers 5's `ClapModel.get_audio_features` is unit-norm; ImageBind's
vision output is unit-norm and its audio output is unit-norm x 20 averaged over three clips.)
Weights load in float32 on `device` ("auto": cuda when a GPU is visible, else cpu).

Kinds (`EncoderSpec.name`), one module each:
- `tiny` (tiny.py): real architectures at toy sizes (a tiny CLIP vision tower; a tiny ResNet on
  log-mels), built from configs in code with a fixed seed (no downloads), or loaded from a
  directory written by their `save_pretrained`.
- `clip` (clip.py, image): `CLIPVisionModelWithProjection` + `CLIPImageProcessor` from a hub id
  (default openai/clip-vit-large-patch14) or a local directory; `image_embeds`.
- `clap` (clap.py, audio): `ClapModel.get_audio_features` + `ClapFeatureExtractor` from a hub id
  (default laion/clap-htsat-unfused) or a local directory.
- `imagebind` (imagebind.py, image and audio, shared space "imagebind"): Meta's ImageBind through
  the `imagebind-unofficial` package (`pip install 'art2mus[imagebind]'`); CC BY-NC-SA 4.0 code and
  weights, non-commercial use only. A local `.pth` or the official imagebind_huge checkpoint.
base.py holds what they share: the `ImageEncoder`/`AudioEmbedder` protocols, the kinds, weight
identity (local paths and their content hashes) and small helpers. Imports go one way: the family
modules import base (tiny also clip), never this package; this package imports them all.

Encoder ids name the weights exactly: `<kind>:<hub id>@<revision>` for hub ids, `<kind>:local@<hash>`
(content hash of the files) for local paths, `tiny:<hash of config, seed and library versions>`
for tiny models built in code, `imagebind:imagebind_huge` for the official checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from art2mus.config import EncoderSpec
from art2mus.errors import Art2MusError
from art2mus.models.encoders.base import (
    AUDIO_KINDS,
    DEFAULT_SOURCES,
    IMAGE_KINDS,
    SHARED_SPACES,
    WEIGHT_DTYPE,
    WEIGHT_SUFFIXES,
    AudioEmbedder,
    ImageEncoder,
    check_kind,
    default_device,
    digest_files,
    load_hf,
    load_hf_model,
    local_digest,
    looks_like_path,
    offline_error,
    resample,
    resolve_device,
    resolve_local,
    rgb,
    seeded_build,
    shared_space_for,
    source_field,
    weight_files,
)
from art2mus.models.encoders.clap import ClapAudioEmbedder, load_clap
from art2mus.models.encoders.clip import ClipImageEncoder, load_clip
from art2mus.models.encoders.imagebind import (
    IMAGEBIND_AUDIO,
    IMAGEBIND_HUGE_URL,
    ImageBindAudioEmbedder,
    ImageBindImageEncoder,
    imagebind_checkpoint,
    import_imagebind,
    load_imagebind_model,
    save_imagebind,
)
from art2mus.models.encoders.tiny import (
    TINY_SEED,
    TinyAudioEmbedder,
    build_tiny_audio_embedder,
    build_tiny_image_encoder,
    load_tiny_audio,
    tiny_digest,
    tiny_encoder_id,
)

__all__ = [
    "AUDIO_KINDS", "DEFAULT_SOURCES", "IMAGEBIND_AUDIO", "IMAGEBIND_HUGE_URL", "IMAGE_KINDS", "SHARED_SPACES",
    "TINY_SEED", "WEIGHT_DTYPE", "WEIGHT_SUFFIXES",
    "AudioEmbedder", "ClapAudioEmbedder", "ClipImageEncoder", "EncoderRef", "ImageBindAudioEmbedder",
    "ImageBindImageEncoder", "ImageEncoder", "TinyAudioEmbedder",
    "build_tiny_audio_embedder", "build_tiny_image_encoder", "check_kind", "default_device", "digest_files",
    "encoder_id_for", "imagebind_checkpoint", "import_imagebind", "load_audio_embedder", "load_clap", "load_clip",
    "load_hf", "load_hf_model", "load_image_encoder", "load_imagebind_model", "load_tiny_audio", "local_digest",
    "looks_like_path", "offline_error", "resample", "resolve_device", "resolve_local", "rgb", "save_imagebind",
    "seeded_build", "shared_space_for", "source_field", "tiny_digest", "tiny_encoder_id", "weight_files",
]


def encoder_id_for(spec: EncoderSpec, role: str) -> str:
    """The id of the weights `spec` names, computed without loading them ("image" or "audio" role)."""
    check_kind(spec, role)
    local = resolve_local(spec.source, spec.name, role)
    if local is not None:
        return f"{spec.name}:local@{local_digest(local)[:16]}"
    if spec.name == "tiny":
        if spec.source:
            raise Art2MusError(f"tiny {role} model {spec.source!r} not found: tiny models load from local paths only")
        return tiny_encoder_id(role)
    if spec.name == "imagebind":
        if spec.source:
            raise Art2MusError(f"imagebind weights {spec.source!r} not found: pass a local .pth path")
        return "imagebind:imagebind_huge"
    return f"{spec.name}:{spec.source or DEFAULT_SOURCES[spec.name]}@{spec.revision}"


def load_image_encoder(spec: EncoderSpec, device: str = "cpu") -> ImageEncoder:
    """The image encoder `spec` names, ready to embed on `device` (a torch device name, or "auto")."""
    encoder_id = encoder_id_for(spec, "image")
    device = resolve_device(device)
    if spec.name == "tiny" and not spec.source:
        return build_tiny_image_encoder(device=device)
    if spec.name in ("tiny", "clip"):  # a saved tiny encoder is a (small) CLIP vision tower
        return load_clip(spec, encoder_id, device)
    return ImageBindImageEncoder(load_imagebind_model(spec, "image", device), encoder_id, device)


def load_audio_embedder(spec: EncoderSpec, device: str = "cpu") -> AudioEmbedder:
    """The audio embedder `spec` names, ready to embed on `device` (a torch device name, or "auto")."""
    encoder_id = encoder_id_for(spec, "audio")
    device = resolve_device(device)
    if spec.name == "tiny" and not spec.source:
        return build_tiny_audio_embedder(device=device)
    if spec.name == "tiny":
        local = resolve_local(spec.source, "tiny", "audio")
        assert local is not None  # encoder_id_for raised for a tiny source that is no local path
        return load_tiny_audio(local, encoder_id, device)
    if spec.name == "clap":
        return load_clap(spec, encoder_id, device)
    return ImageBindAudioEmbedder(load_imagebind_model(spec, "audio", device), encoder_id, device)


@dataclass(frozen=True)
class EncoderRef:
    """An encoder named by params, identified without loading it; `load()` builds it on `device`."""

    spec: EncoderSpec
    role: str  # image | audio
    device: str = "cpu"  # or "auto"

    @property
    def encoder_id(self) -> str:
        return encoder_id_for(self.spec, self.role)

    @property
    def shared_space(self) -> str | None:
        return shared_space_for(self.spec)

    def load(self) -> ImageEncoder | AudioEmbedder:
        loader = load_image_encoder if self.role == "image" else load_audio_embedder
        return loader(self.spec, self.device)
