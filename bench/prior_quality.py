"""The tiny prior's budget curve: training time against what the prior can render.

For each variant of the `prior` recipe (steps, UNet capacity, learning rate), the prior is trained
on the sample's train tracks as the `prior` stage trains it, then the oracle clips (generated from
the prior's own audio conditioning of each held-out track, the evaluation's `oracle` row) are
scored like the evaluation scores them: the planted-factor estimator's accuracy per factor (the
same estimator, fitted on train tracks through the codec and vocoder), and fad_spectral against the
references, beside the floor (the references themselves through codec and vocoder).

The embedded sample at its default size (384 artworks), split 80/20 by track with a fixed seed;
the evaluation's sampler (DPM-Solver++, 25 steps, guidance 3.5). Each variant's training seconds
are measured in the same run on this machine, with 2 torch threads (quick: the caller's).
`python -m bench prior_quality` runs every variant in VARIANTS (about an hour on 2 cores).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from art2mus.config import AudioParams, BackboneParams, EvaluateParams, PriorParams, SampleParams, TrainParams
from art2mus.data.sample import fma_track_path, make_sample
from art2mus.evaluation.embedders import embed_waveforms, load_frame_embedder
from art2mus.evaluation.evaluate import reference_crops
from art2mus.evaluation.fad import fad_sets
from art2mus.evaluation.planted import MUSIC_FACTORS, fit_factor_estimator, vocoded
from art2mus.models.audio import log_mel, mel_transform
from art2mus.models.backbone import Backbone
from art2mus.models.encoders import build_tiny_image_encoder
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig, trimmed
from art2mus.training.aligner import new_aligner
from art2mus.training.prior import train_prior

logger = logging.getLogger(__name__)

THREADS = 2
# name -> (prior overrides, tiny-backbone overrides): one change at a time against `default`.
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "layout_4x8": ({}, {"fold_time": 4, "fold_mel": 8}),  # finer time in the latent, same positions
    "attention_2_levels": ({}, {"attention_levels": 2}),
    "steps_400": ({"steps": 400}, {}),  # the default before issue 14: half the samples and updates
    "steps_400_ema_0.99": ({"steps": 400, "ema_decay": 0.99}, {}),  # the weights' average (about 100 steps)
    "steps_400_lr_0.006": ({"steps": 400, "lr": 0.006}, {}),  # 400 steps' updates, twice the step size
    "batch_32": ({"batch_size": 32}, {}),  # the 400-step default's samples, twice its updates
}
GUIDANCE = (3.5, 1.5, 6.0)  # the evaluation's first; the oracle clips at each
TARGET_ORACLE_VS_REFERENCE = 0.8  # issue 14: the oracle row reads each factor at >= 0.8 of the references
QUICK_VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {"default": ({"steps": 4, "batch_size": 8}, {})}


def sample_split(root: Path, quick: bool) -> tuple[list[Path], list[Path], pd.DataFrame]:
    """The sample's tracks with planted factors: (train paths, held-out paths, factor levels by track id)."""
    size = SampleParams(n_artworks=48, n_artists=8, n_extra_tracks=0) if quick else SampleParams()
    make_sample(size, AudioParams(), root)
    levels = pd.read_csv(root / "factors.csv").dropna(subset=["track_id"]).astype({"track_id": "int64"})
    levels = levels.drop_duplicates("track_id").set_index("track_id")[list(MUSIC_FACTORS)]
    ids = np.random.default_rng(0).permutation(levels.index.to_numpy())
    held = len(ids) // 5
    paths = {track: root / "fma" / fma_track_path(int(track)) for track in ids}
    return [paths[t] for t in ids[held:]], [paths[t] for t in ids[:held]], levels.loc[ids]


@torch.no_grad()
def oracle_clips(backbone: Backbone, references: list[np.ndarray], audio: AudioParams,
                 config: GenerationConfig) -> list[np.ndarray]:
    """Clips generated from the prior's own conditioning of each reference (the evaluation's oracle row)."""
    encoder = build_tiny_image_encoder()
    pipeline = Art2MusPipeline(encoder, new_aligner(encoder.dim, backbone.lm_width, TrainParams()), backbone)
    transform = mel_transform(audio)
    latents = torch.cat([backbone.codec.encode(log_mel(torch.from_numpy(np.stack(references[start: start + 32])),
                                                       audio, transform)) for start in range(0, len(references), 32)])
    assert backbone.audio_encoder is not None  # the tiny prior's
    return pipeline.render(backbone.audio_encoder(latents), config)


def fad_of(references: list[np.ndarray], clips: list[np.ndarray], sample_rate: int, seed: int) -> float:
    embedder = load_frame_embedder("spectral", "", "main")
    found = fad_sets(embed_waveforms(references, sample_rate, embedder), embed_waveforms(clips, sample_rate, embedder),
                     name="fad_spectral", embedder_id=embedder.embedder_id, n_boot=0, seed=seed)
    return float(found.value)


def goal(value: float) -> dict[str, Any]:
    return {"value": round(value, 3), "target": TARGET_ORACLE_VS_REFERENCE, "met": value >= TARGET_ORACLE_VS_REFERENCE}


def prior_point(name: str, overrides: tuple[dict[str, Any], dict[str, Any]], train: list[Path], held: list[Path],
                levels: pd.DataFrame, threads: int, guidance: tuple[float, ...] = GUIDANCE) -> dict[str, Any]:
    """Train one variant; its training seconds, losses, and the oracle row's planted accuracy and FAD."""
    audio, evaluate = AudioParams(), EvaluateParams()
    prior = PriorParams(**{**PriorParams().model_dump(), "threads": threads, **overrides[0]})
    backbone_params = BackboneParams(tiny={**BackboneParams().tiny.model_dump(), **overrides[1]})
    result = train_prior([str(path) for path in train], audio, backbone_params, prior, quiet=True)
    backbone = result.backbone
    references = reference_crops(held, audio)
    floor = [wave for batch in vocoded(references, backbone, audio) for wave in trimmed(batch, len(references[0]))]
    chosen = min(evaluate.planted_tracks, len(train))
    estimator = fit_factor_estimator(train[:chosen], levels.iloc[len(held): len(held) + chosen], backbone, audio)
    wanted = levels.iloc[: len(held)].reset_index(drop=True)

    def scored(clips: list[np.ndarray]) -> dict[str, Any]:
        found = estimator.score(clips, wanted, audio)
        return {"planted": {score.factor: round(score.accuracy.value, 3) for score in found},
                "planted_low": {score.factor: round(score.accuracy.low, 3) for score in found},
                "chance": {score.factor: round(score.chance, 3) for score in found},
                "fad_spectral": round(fad_of(references, clips, audio.sample_rate, evaluate.seed), 2)}

    oracle: dict[str, dict[str, Any]] = {}
    for scale in guidance:
        config = GenerationConfig(scheduler=evaluate.scheduler, steps=evaluate.steps, guidance_scale=scale,
                                  seed=evaluate.seed, batch_size=evaluate.batch_size)
        oracle[f"guidance_{scale}"] = scored(oracle_clips(backbone, references, audio, config))
    floor_scores = scored(floor)
    point: dict[str, Any] = {
        "variant": name, "prior": overrides[0], "tiny": overrides[1], "train_seconds": round(result.seconds, 1),
        "unet_parameters": sum(p.numel() for p in backbone.unet.parameters()),
        "loss_first10": round(float(np.mean(result.losses[:10])), 4),
        "loss_last10": round(float(np.mean(result.losses[-10:])), 4),
        "oracle": oracle, "floor": floor_scores,
    }
    first = next(iter(oracle.values()))["planted"]
    point["goals"] = {f"oracle_vs_reference_{factor}": goal(first[factor] / max(floor_scores["planted"][factor], 1e-9))
                      for factor in first}
    logger.info("prior_quality: %s", point)
    return point


def run(quick: bool = False, names: list[str] | None = None) -> dict:
    threads = torch.get_num_threads() if quick else THREADS
    variants = QUICK_VARIANTS if quick else {name: VARIANTS[name] for name in names or VARIANTS}
    with tempfile.TemporaryDirectory(prefix="art2mus-bench-prior-") as tmp:
        train, held, levels = sample_split(Path(tmp), quick)
        guidance = GUIDANCE[:1] if quick else GUIDANCE
        points = [prior_point(name, overrides, train, held, levels, threads, guidance)
                  for name, overrides in variants.items()]
    return {"benchmark": "prior_quality", "threads": threads, "train_tracks": len(train), "held_out_tracks": len(held),
            "points": points}


if __name__ == "__main__":  # python -m bench.prior_quality [variant ...]: some variants only
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    print(json.dumps(run(names=sys.argv[1:] or None), indent=1))
