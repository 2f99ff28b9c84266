"""Generation: the packaged pipeline with DPM-Solver++ at 25 steps against DDIM at 200 (the 2024 recipe).

Target: DPM-Solver++ 25 at least 4x faster than DDIM 200 on a batch of 4 images: half the 8x step
ratio, so the work done once per batch (image encoder, aligner, GPT-2, codec, Griffin-Lim vocoder)
stays small next to the denoising loop.

The pipeline is built from parts as the packaged model is: tiny backbone, tiny image encoder and a
freshly initialised aligner of the default recipe (sampling costs the same with trained weights),
with guidance (two UNet passes per step), 2 torch threads (quick: the caller's), timed after a short warm-up run. The
work outside the denoising loop is timed on its own, so each configuration's seconds per step are
reported too.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import numpy as np
import torch
from PIL import Image

from art2mus.config import AudioParams, BackboneParams, SampleParams, TrainParams
from art2mus.models.encoders import build_tiny_image_encoder
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig
from art2mus.models.tiny import build_tiny_backbone
from art2mus.training.aligner import new_aligner

logger = logging.getLogger(__name__)

THREADS = 2
BATCH = 4
TARGET_SPEEDUP = 4.0


def build_pipeline() -> Art2MusPipeline:
    """Tiny backbone + tiny image encoder + a new aligner of the default recipe."""
    backbone = build_tiny_backbone(BackboneParams(), AudioParams(), seed=0)
    encoder = build_tiny_image_encoder()
    return Art2MusPipeline(encoder, new_aligner(encoder.dim, backbone.lm_width, TrainParams()), backbone)


def random_images(n: int, size: int = SampleParams().image_size, seed: int = 0) -> list[Image.Image]:
    """n random RGB images at the sample's size."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def seconds_outside_loop(pipeline: Art2MusPipeline, images: list[Image.Image]) -> float:
    """The work done once per batch: image encoder, aligner, GPT-2, codec decode and vocoder."""
    backbone = pipeline.backbone
    started = time.perf_counter()
    with torch.no_grad():
        backbone.language_of_audio(pipeline.aligner(pipeline.encoder.embed_images(images).float()))
        latents = torch.randn(len(images), *pipeline.latent_shape(None))
        backbone.vocoder(backbone.codec.decode(latents))
    return time.perf_counter() - started


def timed_generation(
    pipeline: Art2MusPipeline, images: list[Image.Image], config: GenerationConfig
) -> tuple[float, list[np.ndarray]]:
    """Seconds to generate one waveform per image, and the waveforms."""
    started = time.perf_counter()
    waves = pipeline(images, config)
    return time.perf_counter() - started, waves


def run(quick: bool = False) -> dict:
    # quick: few steps, the same 8x step ratio
    steps: dict[Literal["dpmsolver++", "ddim"], int] = (
        {"dpmsolver++": 2, "ddim": 16} if quick else {"dpmsolver++": 25, "ddim": 200})
    threads = torch.get_num_threads()
    n_threads = threads if quick else THREADS  # quick: the caller's, so it never oversubscribes the cores
    torch.set_num_threads(n_threads)
    try:
        pipeline = build_pipeline()
        images = random_images(BATCH)
        pipeline(images, GenerationConfig(steps=2, batch_size=BATCH))  # warm-up: first calls, lazy imports
        seconds: dict[str, float] = {}
        waves: dict[str, list[np.ndarray]] = {}
        for name, n_steps in steps.items():
            seconds[name], waves[name] = timed_generation(
                pipeline, images, GenerationConfig(scheduler=name, steps=n_steps, batch_size=BATCH))
            logger.info("generation bench: %s, %d steps: %.1f s", name, n_steps, seconds[name])
        outside = seconds_outside_loop(pipeline, images)
    finally:
        torch.set_num_threads(threads)

    fast, slow = seconds["dpmsolver++"], seconds["ddim"]
    speedup = slow / fast
    expected_samples = round(AudioParams().crop_seconds * AudioParams().sample_rate)
    return {
        "benchmark": "generation",
        "batch": BATCH,
        "threads": n_threads,
        "guidance_scale": GenerationConfig().guidance_scale,
        **{name: {"steps": n_steps, "seconds": seconds[name],
                  "seconds_per_step": (seconds[name] - outside) / n_steps} for name, n_steps in steps.items()},
        "seconds_outside_loop": outside,
        "dpmsolver_vs_ddim_speedup": speedup,
        "step_ratio": steps["ddim"] / steps["dpmsolver++"],
        "waves_ok": all(len(batch) == BATCH and all(len(wave) == expected_samples and np.isfinite(wave).all()
                                                    for wave in batch) for batch in waves.values()),
        "goals": {"dpmsolver_vs_ddim_speedup": {"value": speedup, "target": TARGET_SPEEDUP,
                                                "met": bool(speedup >= TARGET_SPEEDUP)}},
    }
