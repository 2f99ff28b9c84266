"""Art2MusPipeline: image(s) -> music, from the parts (encoder, aligner, backbone) like a diffusers pipeline.

A packaged model is a folder: `aligner/` (safetensors + config), `prior/` (the tiny backbone's weights,
or a reference to AudioLDM2), and `model.json` (the image encoder's spec and the identities of
every part), so it generates without the repository.

Loading verifies it (`verify_parts`): every weights and config file must read (a truncated one is named), and
each part must be the one `model.json` records: the sha256 of the aligner's state dict (tensor names, dtypes,
shapes, bytes: `state_dict_sha256`) is `weights_sha256` (the train record's), the prior is `prior`
(`tiny@<folder hash>`, `local@<folder hash>` or `<hub id>@<revision>`, its files verified by `load_backbone`),
the image encoder is `image_encoder_id`. A mismatch is an error naming the file and both hashes; `info` then
reports the hashes of what was loaded.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from art2mus.config import EncoderSpec
from art2mus.errors import Art2MusError
from art2mus.io import check_model_folder, read_json, rebuild_hint
from art2mus.models.aligner import ImageAligner, state_dict_sha256
from art2mus.models.backbone import Backbone, resolve_device
from art2mus.models.encoders import load_image_encoder
from art2mus.models.loader import load_backbone
from art2mus.workspace import MODEL_FILE

SchedulerName = Literal["dpmsolver++", "ddim"]


@dataclass
class GenerationConfig:
    """How to sample: scheduler, steps, guidance, length, seed, batch."""

    scheduler: SchedulerName = "dpmsolver++"
    steps: int = 25
    guidance_scale: float = 3.5
    seconds: float | None = None  # None: the prior's crop length
    seed: int = 0
    batch_size: int = 4


def make_scheduler(backbone: Backbone, name: SchedulerName):
    """A sampling scheduler sharing the prior's training noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(backbone.scheduler.config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(backbone.scheduler.config, algorithm_type="dpmsolver++")
    raise Art2MusError(f"unknown scheduler {name!r} (choose dpmsolver++ or ddim)")


def save_model(path: str | Path, aligner: ImageAligner, prior_dir: str | Path, encoder: EncoderSpec,
               info: dict[str, Any]) -> None:
    """Package everything generation needs into one folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    aligner.save_pretrained(path / "aligner")
    shutil.copytree(prior_dir, path / "prior", dirs_exist_ok=True)
    record = {**info, "image_encoder": encoder.model_dump(mode="json")}  # the spec to rebuild it with
    (path / MODEL_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def aligner_weights_file(folder: Path) -> Path:
    """The aligner's weights file in its folder (what `save_pretrained` wrote), for messages."""
    found = sorted(folder.glob("*.safetensors"))
    return found[0] if found else folder


def verify_parts(path: Path, info: dict[str, Any], aligner: ImageAligner, backbone: Backbone,
                 encoder) -> dict[str, Any]:
    """`info` with the hashes of what was loaded, after checking them against those `model.json` records
    (each where one is recorded): Art2MusError naming the file and both hashes on a mismatch."""
    loaded = {"weights_sha256": state_dict_sha256(aligner), "prior": str(backbone.info.get("identity", "")),
              "image_encoder_id": str(encoder.encoder_id)}
    where = {"weights_sha256": aligner_weights_file(path / "aligner"), "prior": path / "prior",
             "image_encoder_id": f"image encoder {info['image_encoder'].get('name')} "
                                 f"{info['image_encoder'].get('source') or '(built in)'}"}
    what = {"weights_sha256": "aligner weights", "prior": "prior", "image_encoder_id": "image encoder"}
    verified = []
    for key, actual in loaded.items():
        recorded = info.get(key)
        if not recorded:
            continue
        if recorded != actual:
            raise Art2MusError(
                f"{where[key]}: the {what[key]} loaded hash to {actual}, but {path / MODEL_FILE} records {recorded} "
                f"({key}): the model's files changed after it was trained; restore them "
                f"({rebuild_hint(path / MODEL_FILE)}) or load the model from where it was registered")
        verified.append(key)
    return {**info, **loaded, "verified_on_load": verified}


PEAK_LIMIT = 0.99


def limit_peaks(waves: np.ndarray) -> np.ndarray:
    """Scale down any waveform whose peak exceeds PEAK_LIMIT (never boost): training audio is
    peak-normalised, so loudness is not something the prior learned; this only prevents clipping."""
    peaks = np.abs(waves).max(axis=-1, keepdims=True)
    return waves * np.minimum(1.0, PEAK_LIMIT / np.maximum(peaks, 1e-12))


class Art2MusPipeline:
    """Frozen image encoder -> trained aligner -> frozen GPT-2 + UNet -> codec -> vocoder."""

    def __init__(self, encoder, aligner: ImageAligner, backbone: Backbone, info: dict[str, Any] | None = None) -> None:
        if aligner.config["image_dim"] != encoder.dim:
            raise Art2MusError(f"the aligner was built for {aligner.config['image_dim']}-d image embeddings, but the "
                               f"image encoder {encoder.encoder_id} gives {encoder.dim}-d ones "
                               "(features.image_encoder must be the encoder the aligner was trained with)")
        if aligner.config["lm_width"] != backbone.lm_width:
            raise Art2MusError(f"the aligner writes {aligner.config['lm_width']}-d tokens, but the prior's GPT-2 reads "
                               f"{backbone.lm_width}-d ones (backbone.profile must be the one it was trained with)")
        self.encoder = encoder
        self.backbone = backbone.eval()
        # diffusers wraps ModelMixin.to; its stub loses the bound self, so the device reads as `self`.
        self.aligner = aligner.eval().to(self.backbone.device)  # type: ignore[arg-type]
        self.info = info or {}

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto") -> Art2MusPipeline:
        """Load a packaged model folder (see `save_model`) on `device` (`auto`: the GPU when there is one)."""
        path = Path(path)
        if not (path / MODEL_FILE).is_file():
            raise Art2MusError(f"{path}: not an art2mus model (no {MODEL_FILE})")
        info = read_json(path / MODEL_FILE)
        check_model_folder(path / "aligner")
        device = resolve_device(device)
        encoder = load_image_encoder(EncoderSpec.model_validate(info["image_encoder"]), device=str(device))
        try:
            aligner = ImageAligner.from_pretrained(path / "aligner")
        except (OSError, ValueError, RuntimeError) as error:  # files that read but do not make an aligner
            raise Art2MusError(f"{path / 'aligner'}: not a loadable aligner ({type(error).__name__}: "
                               f"{str(error)[:300]}); {rebuild_hint(path / 'aligner')}") from None
        backbone = load_backbone(path / "prior", device)
        return cls(encoder, aligner, backbone, verify_parts(path, info, aligner, backbone, encoder))

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def seconds(self) -> float:
        """The prior's own length (its crop)."""
        info = self.backbone.info
        return info["crop_frames"] * info["hop_length"] / info["sample_rate"]

    @property
    def sample_rate(self) -> int:
        return int(self.backbone.info["sample_rate"])

    def latent_shape(self, seconds: float | None) -> tuple[int, int, int]:
        """Latent shape for a length: the codec folds time, so length sets the latent height."""
        channels, height, width = self.backbone.latent_shape
        if seconds is None:
            return channels, height, width
        info = self.backbone.info
        frames_per_row = info["crop_frames"] // height
        frames = math.ceil(seconds * info["sample_rate"] / info["hop_length"])
        return channels, max(1, math.ceil(frames / frames_per_row)), width

    @torch.no_grad()
    def sample_latents(self, loa: torch.Tensor, config: GenerationConfig, generator: torch.Generator) -> torch.Tensor:
        """The denoising loop with classifier-free guidance against the prior's null conditioning."""
        scheduler = make_scheduler(self.backbone, config.scheduler)
        scheduler.set_timesteps(config.steps, device=loa.device)
        shape = (loa.shape[0], *self.latent_shape(config.seconds))
        # Drawn on a seeded CPU generator, then moved: a seed gives the same music on CPU and GPU.
        latents = torch.randn(shape, generator=generator).to(loa.device, loa.dtype) * scheduler.init_noise_sigma
        guided = config.guidance_scale > 1.0
        conditioning = torch.cat([self.backbone.null_like(loa), loa]) if guided else loa
        for t in scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            prediction = self.backbone.predict(model_input, t.expand(model_input.shape[0]), conditioning)
            if guided:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + config.guidance_scale * (conditional - unconditional)
            latents = scheduler.step(prediction, t, latents).prev_sample
        return latents

    @torch.no_grad()
    def __call__(self, images: list, config: GenerationConfig | None = None) -> list[np.ndarray]:
        """One waveform (float32, mono, `sample_rate`) per image, of the requested length."""
        config = config or GenerationConfig()
        embeds = torch.cat([self.encoder.embed_images(images[start: start + config.batch_size]).float()
                            for start in range(0, len(images), config.batch_size)])
        return self.render(self.aligner(embeds.to(self.device)), config)

    @torch.no_grad()
    def render(self, tokens: torch.Tensor, config: GenerationConfig | None = None) -> list[np.ndarray]:
        """One waveform per row of aligner tokens [N, K, d_lm] (baselines condition through here too)."""
        config = config or GenerationConfig()
        generator = torch.Generator().manual_seed(config.seed)
        samples = round((config.seconds or self.seconds) * self.sample_rate)
        waves: list[np.ndarray] = []
        for start in range(0, len(tokens), config.batch_size):
            loa = self.backbone.language_of_audio(tokens[start: start + config.batch_size].to(self.device))
            latents = self.sample_latents(loa, config, generator)
            audio = self.backbone.vocoder(self.backbone.codec.decode_in_range(latents))
            waves += trimmed(audio, samples)
        return waves


def trimmed(audio: torch.Tensor, samples: int) -> list[np.ndarray]:
    """[B, n] vocoder output -> B float32 waves of exactly `samples` (HiFi-GAN returns 163,872 for 163,840;
    a shorter one is zero-padded), peak-limited."""
    waves = limit_peaks(audio.float().cpu().numpy())[:, :samples]
    if waves.shape[1] < samples:
        waves = np.pad(waves, ((0, 0), (0, samples - waves.shape[1])))
    return [wave.astype(np.float32) for wave in waves]
