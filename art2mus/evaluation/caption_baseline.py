"""The caption baseline: the text-conditioned AudioLDM2 on each artwork's metadata caption (row `text_captions`).

The paper's comparison. `load_text_pipeline` rebuilds diffusers' full AudioLDM2Pipeline around the
backbone's own UNet, GPT-2, VAE and vocoder (CLAP + T5 + projection + tokenizers loaded from the same
source) and `render_captions` samples it exactly as `Art2MusPipeline.render` samples: same scheduler,
steps, guidance, length, per-batch initial noise, peak limit and the same null conditioning (the
negative LOA is the backbone's null: zeros by default, as AudioLDM2 was trained).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from art2mus.config import EvaluateParams
from art2mus.evaluation.captions import metadata_caption
from art2mus.models.audioldm2 import PROFILE, load_pipeline
from art2mus.models.backbone import Backbone, BackboneError
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig, make_scheduler, trimmed

logger = logging.getLogger(__name__)

CAPTION_BASELINE = "text_captions"


def load_text_pipeline(backbone: Backbone):
    """diffusers' text-conditioned AudioLDM2Pipeline around the backbone's own UNet, GPT-2, VAE and vocoder.

    Only the text side (CLAP, T5, projection model, tokenizers, feature extractor) is loaded from the
    backbone's source, on its device; a BackboneError says why when it cannot be.
    """
    if backbone.info.get("profile") != PROFILE:
        raise BackboneError(f"the {backbone.info.get('profile')} backbone has no text encoders: no language to "
                            "condition on (the caption baseline needs the real AudioLDM2)")
    pipe = load_pipeline(backbone.info["source"], backbone.info["revision"], unet=backbone.unet,
                         language_model=backbone.language_model, vae=backbone.codec.vae, vocoder=backbone.vocoder,
                         scheduler=backbone.scheduler)
    for part in (pipe.text_encoder, pipe.text_encoder_2, pipe.projection_model):
        part.to(backbone.device).eval().requires_grad_(False)
    return pipe


@torch.no_grad()
def caption_streams(text_pipeline, backbone: Backbone, captions: list[str], guided: bool) -> dict[str, torch.Tensor]:
    """The prompt embeddings of `captions` and, with guidance, negatives whose LOA is the backbone's null."""
    device = backbone.device
    if not guided:
        t5, mask, loa = text_pipeline.encode_prompt(captions, device, 1, False, max_new_tokens=backbone.max_new_tokens)
        return {"prompt_embeds": t5, "attention_mask": mask, "generated_prompt_embeds": loa}
    t5, mask, loa = text_pipeline.encode_prompt(captions, device, 1, True, max_new_tokens=backbone.max_new_tokens)
    (negative_t5, t5), (negative_mask, mask), (_, loa) = t5.chunk(2), mask.chunk(2), loa.chunk(2)
    return {"prompt_embeds": t5, "attention_mask": mask, "generated_prompt_embeds": loa,
            "negative_prompt_embeds": negative_t5, "negative_attention_mask": negative_mask,
            "negative_generated_prompt_embeds": backbone.null_like(loa)}


@torch.no_grad()
def render_captions(pipeline: Art2MusPipeline, text_pipeline, captions: list[str],
                    config: GenerationConfig | None = None) -> list[np.ndarray]:
    """One waveform per caption through AudioLDM2's own prompt path (CLAP + T5 -> GPT-2), sampled exactly
    as `pipeline.render` samples: same scheduler, steps, guidance, length, per-batch initial noise, null."""
    config = config or GenerationConfig()
    backbone = pipeline.backbone
    text_pipeline.scheduler = make_scheduler(backbone, config.scheduler)
    shape = pipeline.latent_shape(config.seconds)
    seconds = config.seconds or pipeline.seconds
    samples = round(seconds * pipeline.sample_rate)
    generator = torch.Generator().manual_seed(config.seed)
    guided = config.guidance_scale > 1.0
    waves: list[np.ndarray] = []
    for start in range(0, len(captions), config.batch_size):
        batch = captions[start: start + config.batch_size]
        latents = torch.randn((len(batch), *shape), generator=generator)  # drawn as render draws them
        streams = caption_streams(text_pipeline, backbone, batch, guided)
        audio = text_pipeline(audio_length_in_s=seconds, num_inference_steps=config.steps,
                              guidance_scale=config.guidance_scale, latents=latents.to(backbone.device),
                              max_new_tokens=backbone.max_new_tokens, output_type="pt", **streams).audios
        waves += trimmed(audio, samples)
    return waves


def caption_baseline(pipeline: Art2MusPipeline, pairs: pd.DataFrame, config: EvaluateParams,
                     generation: GenerationConfig) -> tuple[list[np.ndarray] | None, dict[str, Any]]:
    """The text-conditioned AudioLDM2 on each artwork's metadata caption, or None and why it is absent."""
    profile = pipeline.backbone.info.get("profile")
    if config.caption_baseline == "off":
        return None, {"status": "absent", "reason": "evaluate.caption_baseline is off"}
    if profile != PROFILE:
        return None, {"status": "absent", "reason": f"the {profile} backbone has no language (no text encoders or "
                      f"tokenizers); the caption baseline needs the real AudioLDM2 (backbone.profile: {PROFILE})"}
    try:
        text_pipeline = load_text_pipeline(pipeline.backbone)
    except BackboneError as error:
        logger.warning("evaluate: no caption baseline: %s", error)
        return None, {"status": "absent", "reason": f"AudioLDM2's text encoders cannot be loaded: {error}"}
    captions = [metadata_caption(row, config.caption_template) for row in pairs.to_dict("records")]
    logger.info("evaluate: generating %d clips from metadata captions (%s)", len(captions), CAPTION_BASELINE)
    waves = render_captions(pipeline, text_pipeline, captions, generation)
    del text_pipeline  # CLAP and T5 (2 GB) are not kept beyond the baseline
    return waves, {"status": "present", "template": config.caption_template, "captions": captions,
                   "null_conditioning": pipeline.backbone.info.get("null_conditioning")}
