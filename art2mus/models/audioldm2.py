"""The real profile: `cvssp/audioldm2-music` (hub id or local folder) through diffusers' AudioLDM2Pipeline.

Only the UNet, GPT-2, scheduler, VAE (as the codec) and HiFi-GAN (as the vocoder) are kept. The text
encoders run once, on the EMPTY prompt: its T5 embedding is the constant second stream, and its
GPT-2 LOA is the null conditioning when `null_conditioning` is `empty_prompt` (the default, `zeros`,
is what AudioLDM2 trained its unconditional LOA as). No language about the image enters the model.

The text encoders run once, in the `prior` stage (`empty_prompt_streams`, saved beside the reference);
every later load reads only the UNet, GPT-2, VAE, HiFi-GAN and scheduler (`load_kept_parts`).

What a load verifies: from a local folder, every kept part's weights and configs read (a truncated file is
named) and the folder still hashes to the identity the prior stage recorded (`loader.verify_local_source`);
from the Hugging Face cache, every kept file's content matches the hash the cache stores it under (the
sha256 of a weights file, git's blob id of a config: `verify_snapshot`). Each file is hashed once while it
is unchanged (`art2mus.io.verified_sha256_file`: in the process, and for large files across processes).

The real checkpoint has two quirks the loader undoes: its `model_index.json` declares the language
model as `GPT2Model`, which has no `_update_model_kwargs_for_generation` (diffusers' generation needs
`GPT2LMHeadModel`: it is loaded explicitly from the `language_model` folder, same weights), and the
CLAP `text_encoder/config.json` says `torch_dtype: float64` (every part is loaded in an explicit dtype).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from art2mus.io import check_model_folder, verified_sha256_file
from art2mus.models.backbone import Backbone, BackboneError, LatentCodec, resolve_device
from art2mus.models.quiet import quiet_loading

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel
    from transformers import GPT2LMHeadModel, SpeechT5HifiGan

logger = logging.getLogger(__name__)

PROFILE = "audioldm2"
DEFAULT_SECONDS = 10.24  # what the prior was trained on: 1024 mel frames at 16 kHz, hop 160
NULL_CONDITIONINGS = ("zeros", "empty_prompt")
SOURCE_HINT = "set backbone.source to a local copy of the AudioLDM2 pipeline folder"


class LatentCodecAdapter(LatentCodec):
    """AudioLDM2's VAE as a codec: [B, frames, n_mels] log-mel <-> scaled latents [B, C, frames/f, n_mels/f]."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config["scaling_factor"])

    @property
    def scale_factor(self) -> int:
        """Downsampling of the VAE along time and mel (AudioLDM2Pipeline's `vae_scale_factor`)."""
        return 2 ** (len(self.vae.config["block_out_channels"]) - 1)

    def posterior(self, mel: torch.Tensor):
        """The VAE's latent distribution of [B, frames, n_mels] log-mels (on the VAE's device and dtype)."""
        return self.vae.encode(mel[:, None].to(self.vae.device, self.vae.dtype)).latent_dist

    def encode_distribution(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled (mean, std) of the posterior: training draws `mean + std * noise` per step, as
        AudioLDM2 trains on `latent_dist.sample()`."""
        posterior = self.posterior(mel)
        return posterior.mean * self.scaling_factor, posterior.std * self.scaling_factor

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, frames, n_mels] -> scaled latents: the posterior's mean (deterministic, for evaluation)."""
        return self.posterior(mel).mode() * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> [B, frames, n_mels] log-mel."""
        return self.vae.decode(latents.to(self.vae.device, self.vae.dtype) / self.scaling_factor).sample[:, 0]

    def decode_in_range(self, latents: torch.Tensor) -> torch.Tensor:
        """AudioLDM2's HiFi-GAN takes the VAE's output as it is."""
        return self.decode(latents)


def is_local_source(source: str) -> bool:
    """A source naming a folder (existing, or written as a path) rather than a hub id."""
    return Path(source).expanduser().exists() or source.startswith(("/", ".", "~")) or source.count("/") > 1


def load_error(source: str, revision: str, error: Exception) -> BackboneError:
    """Why an AudioLDM2 source could not be loaded, and what to do."""
    detail = f"{error.__class__.__name__}: {str(error)[:300]}"
    if is_local_source(source):
        return BackboneError(f"AudioLDM2 source {source!r} is not a loadable AudioLDM2 pipeline folder; "
                             f"{SOURCE_HINT} ({detail})")
    return BackboneError(f"AudioLDM2 weights {source!r}@{revision} are not in the local cache and cannot be "
                         f"downloaded here; {SOURCE_HINT} ({detail})")


def location(source: str, revision: str) -> tuple[str, dict]:
    """What `from_pretrained` takes for a source: a folder (no revision) or a hub id at a revision."""
    if is_local_source(source):
        folder = Path(source).expanduser()
        if not (folder / "model_index.json").is_file():
            raise BackboneError(f"AudioLDM2 source {source!r}: no model_index.json there; {SOURCE_HINT}")
        return str(folder), {}
    return source, {"revision": revision}


def load_language_model(source: str, revision: str, dtype: torch.dtype = torch.float32) -> GPT2LMHeadModel:
    """GPT-2 with its LM head from the `language_model` folder, whatever class `model_index.json` declares."""
    from transformers import GPT2LMHeadModel

    where, kwargs = location(source, revision)
    try:
        with quiet_loading():
            return GPT2LMHeadModel.from_pretrained(where, subfolder="language_model", dtype=dtype, **kwargs)
    except (OSError, ValueError) as error:
        raise load_error(source, revision, error) from None


def load_pipeline(source: str, revision: str, dtype: torch.dtype = torch.float32, **components):
    """AudioLDM2Pipeline from a local folder or the hub, every part in `dtype`; failures become a BackboneError.

    `components` are parts already in memory (e.g. the backbone's UNet): diffusers uses them and loads the
    rest. The language model is always GPT2LMHeadModel (see the module docstring).
    """
    from diffusers import AudioLDM2Pipeline

    where, kwargs = location(source, revision)
    if "language_model" not in components:
        components["language_model"] = load_language_model(source, revision, dtype)
    try:
        with quiet_loading():
            pipe = AudioLDM2Pipeline.from_pretrained(where, dtype=dtype, **kwargs, **components)
    except (OSError, ValueError, KeyError) as error:
        raise load_error(source, revision, error) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def default_frames(sample_rate: int, hop_length: int, scale_factor: int) -> int:
    """Mel frames of the prior's length, rounded up to the VAE's downsampling as the pipeline does."""
    frames = round(DEFAULT_SECONDS * sample_rate / hop_length)
    return math.ceil(frames / scale_factor) * scale_factor


STREAMS_FILE = "conditioning.safetensors"  # the empty prompt's streams, computed once by the `prior` stage
KEPT_PARTS = ("unet", "vae", "vocoder", "scheduler")  # with the language model: what a backbone holds


@torch.no_grad()
def empty_prompt_streams(source: str, revision: str, max_new_tokens: int,
                         device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """T5 embedding, T5 mask and GPT-2 LOA of the empty prompt ([1, 1, 1024], [[1]], [1, 8, 768] for the real
    one), through the whole pipeline: the only time the text encoders (CLAP, T5: 2 GB) are loaded."""
    device = resolve_device(device)
    pipe = load_pipeline(source, revision)
    pipe.to(device)
    t5_embeds, t5_mask, loa = pipe.encode_prompt("", device, num_waveforms_per_prompt=1,
                                                 do_classifier_free_guidance=False, max_new_tokens=max_new_tokens)
    return {"t5_embeds": t5_embeds.cpu().contiguous(), "t5_mask": t5_mask.cpu().contiguous(),
            "empty_loa": loa.cpu().contiguous()}


LOADED_FOLDERS = (*KEPT_PARTS, "language_model")  # the subfolders a backbone load reads


def check_local_parts(source: str) -> None:
    """Every weights and config file a load reads from a local folder is complete (a truncated one is named)."""
    folder = Path(source).expanduser()
    for part in LOADED_FOLDERS:
        if (folder / part).is_dir():
            check_model_folder(folder / part, f"restore the AudioLDM2 folder {folder} ({SOURCE_HINT})")


def snapshot_folder(source: str, revision: str) -> Path | None:
    """The Hugging Face cache's snapshot of hub id `source` at `revision` (a commit or a ref), if it is cached."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{source.replace('/', '--')}"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    folder = repo / "snapshots" / commit
    return folder if folder.is_dir() else None


def git_blob_sha1(path: Path) -> str:
    """Git's id of a file's content (what the hub's etag is for a file not stored with LFS)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def cache_blob(file: Path) -> Path:
    """The `blobs/<etag>` entry a snapshot file links to: one link followed, since the blob may itself link on to
    a store shared between caches, named by another hash."""
    return Path(os.path.normpath(file.parent / os.readlink(file))) if file.is_symlink() else file


def verify_snapshot(folder: Path, parts: tuple[str, ...] = LOADED_FOLDERS, hint: str = "") -> int:
    """Check each file of `parts` in a cache snapshot against the hash the cache stores it under: its blob's name
    is the sha256 of an LFS file (the weights) or git's blob id of a small one (configs). BackboneError naming
    the file and both hashes on a mismatch. Returns how many files were verified."""
    checked = 0
    for part in parts:
        for file in sorted((folder / part).rglob("*")) if (folder / part).is_dir() else ():
            if not file.is_file():
                continue
            blob = cache_blob(file)
            if re.fullmatch(r"[0-9a-f]{64}", blob.name):
                actual = verified_sha256_file(blob)
            elif re.fullmatch(r"[0-9a-f]{40}", blob.name):
                actual = git_blob_sha1(blob)
            else:  # not stored as a cache blob (a copied snapshot): no recorded hash to check against
                continue
            if actual != blob.name:
                raise BackboneError(f"{file}: its content hashes to {actual}, but the Hugging Face cache stores it as "
                                    f"{blob.name} (the hash it was downloaded with): the file changed on disk; "
                                    f"delete {blob} and download it again{hint}")
            checked += 1
    return checked


def verify_hub_files(source: str, revision: str) -> None:
    """`verify_snapshot` on the cached snapshot a hub load read (logged when there is none to check)."""
    folder = snapshot_folder(source, revision)
    if folder is None:
        logger.warning("AudioLDM2 %s@%s: no snapshot in the Hugging Face cache to verify the loaded files against",
                       source, revision)
        return
    hint = f" (huggingface-cli download {source} --revision {revision})"
    logger.info("AudioLDM2 %s@%s: %d cached files verified", source, revision, verify_snapshot(folder, hint=hint))


class KeptParts(TypedDict):
    """The parts of the AudioLDM2 pipeline a backbone keeps."""

    unet: AudioLDM2UNet2DConditionModel
    vae: AutoencoderKL
    vocoder: SpeechT5HifiGan
    scheduler: Any
    language_model: GPT2LMHeadModel


def load_kept_parts(source: str, revision: str, dtype: torch.dtype = torch.float32) -> KeptParts:
    """UNet, GPT-2 (with its head), VAE, HiFi-GAN and scheduler, each from its subfolder: no text encoders."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel
    from transformers import SpeechT5HifiGan

    where, kwargs = location(source, revision)
    if is_local_source(source):
        check_local_parts(source)
    try:
        with quiet_loading():
            return {
                "unet": AudioLDM2UNet2DConditionModel.from_pretrained(where, subfolder="unet", dtype=dtype,
                                                                      **kwargs),
                "vae": AutoencoderKL.from_pretrained(where, subfolder="vae", dtype=dtype, **kwargs),
                "vocoder": SpeechT5HifiGan.from_pretrained(where, subfolder="vocoder", dtype=dtype, **kwargs),
                "scheduler": DDIMScheduler.from_pretrained(where, subfolder="scheduler", **kwargs),
                "language_model": load_language_model(source, revision, dtype),
            }
    except (OSError, ValueError) as error:
        raise load_error(source, revision, error) from None


def load_audioldm2_backbone(source: str, revision: str, max_new_tokens: int, null_conditioning: str = "zeros",
                            device: str | torch.device = "cpu", identity: str | None = None,
                            streams: dict[str, torch.Tensor] | None = None,
                            dtype: torch.dtype = torch.float32) -> Backbone:
    """cvssp/audioldm2-music (hub id or local path) as a frozen Backbone on `device`, in `dtype` (float32
    unless chosen), conditioned only by the empty prompt (`streams`: computed here when not given)."""
    if null_conditioning not in NULL_CONDITIONINGS:
        raise BackboneError(f"backbone.null_conditioning: {null_conditioning!r} is not one of {NULL_CONDITIONINGS}")
    device = resolve_device(device)
    streams = streams or empty_prompt_streams(source, revision, max_new_tokens, device)
    parts = load_kept_parts(source, revision, dtype)
    if not is_local_source(source):
        verify_hub_files(source, revision)
    empty_loa = streams["empty_loa"].to(dtype)
    null_loa = torch.zeros_like(empty_loa) if null_conditioning == "zeros" else empty_loa
    vocoder, vae = parts["vocoder"], parts["vae"]
    codec = LatentCodecAdapter(vae)
    sample_rate = int(vocoder.config.sampling_rate)
    n_mels = int(vocoder.config.model_in_dim)
    hop_length = int(math.prod(vocoder.config.upsample_rates))
    scale = codec.scale_factor
    frames = default_frames(sample_rate, hop_length, scale)
    latent_shape = [int(vae.config["latent_channels"]), frames // scale, n_mels // scale]
    backbone = Backbone(
        unet=parts["unet"], language_model=parts["language_model"], scheduler=parts["scheduler"], codec=codec,
        vocoder=vocoder, t5_embeds=streams["t5_embeds"].to(dtype), t5_mask=streams["t5_mask"], null_loa=null_loa,
        info={"profile": PROFILE, "source": source, "revision": revision, "max_new_tokens": max_new_tokens,
              "null_conditioning": null_conditioning, "identity": identity or f"{source}@{revision}",
              "sample_rate": sample_rate, "n_mels": n_mels, "hop_length": hop_length, "crop_frames": frames,
              "latent_shape": latent_shape, "vae_scale_factor": scale, "dtype": str(dtype).removeprefix("torch.")},
    )
    return backbone.eval().to(device)
