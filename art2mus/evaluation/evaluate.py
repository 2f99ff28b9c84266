"""Evaluate one packaged model on a split, the same way for every model.

Used by the `evaluate` stage and by `art2mus evaluate --model`. Everything is computed from the
media with the model's own parts (its image encoder, its prior's codec), so two versions with
different priors still compare on the same items, candidates, noise, timesteps and seeds:

1. correspondence: retrieval among K and the matched-vs-mismatched gap for the model, the oracle
   (the prior's own audio encoder: the ceiling), mean conditioning and untrained aligners;
2. generation for every artwork by the model and by the mean / untrained baselines, by the oracle
   (the prior's own audio conditioning of each paired track: the ceiling of what the prior can render;
   tiny profile only, absent with its reason otherwise) and, with the real AudioLDM2, by the
   text-conditioned AudioLDM2 on metadata captions (`text_captions`, same scheduler, steps, guidance,
   length and noise; absent with its reason otherwise), scored by FAD against the paired reference
   tracks, ImageBindScore, the tagger KL and, on the embedded sample, by an independent estimator of
   the planted factors; the references themselves through the codec and vocoder (`references_vocoded`)
   are scored the same way: the floor every FAD reads against;
3. per-item scores (the promotion decision pairs them across models), metrics, plots, the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from art2mus.config import AudioParams, EvaluateParams, Params
from art2mus.data.schema import ARTWORKS_MANIFEST, SPLITS_TABLE, TRACKS_MANIFEST
from art2mus.errors import Art2MusError
from art2mus.evaluation.caption_baseline import CAPTION_BASELINE, caption_baseline
from art2mus.evaluation.correspondence import (
    CorrespondenceResult,
    candidate_sets,
    compare_conditioning,
    error_matrix,
    hit_rate,
    summarise,
)
from art2mus.evaluation.embedders import embed_waveforms, load_frame_embedder, metric_name
from art2mus.evaluation.fad import fad_sets
from art2mus.evaluation.planted import MUSIC_FACTORS, VOCODE_BATCH, fit_factor_estimator
from art2mus.evaluation.report import MetricRow, ReportItem, write_report
from art2mus.evaluation.scores import image_bind_score_of, kl_score
from art2mus.generation import open_image, resolve_model_dir, write_wav
from art2mus.io import atomic_path, read_json, read_table, write_json_atomic
from art2mus.models.aligner import ImageAligner
from art2mus.models.audio import log_mel, mel_transform, model_crop, read_mono
from art2mus.models.encoders import load_audio_embedder
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig, trimmed

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PER_ITEM_FILE = "per_item.parquet"
PLOTS_DIR = "plots"
GENERATED_DIR = "generated"
REPORT_DIR = "report"
GENERATING = ("trained", "mean", "untrained", "oracle")  # conditionings that generate music from tokens
ORACLE = "oracle"
REFERENCES_VOCODED = "references_vocoded"  # the references through codec and vocoder: the FAD floor


@dataclass
class SplitData:
    """The split's pairs with the files of their artworks and tracks."""

    pairs: pd.DataFrame  # artwork_id, track_id, artist, title, ...
    image_paths: list[Path]
    track_paths: list[Path]


@dataclass
class Evaluation:
    """What one evaluation found: metrics.json's content and the per-item scores."""

    metrics: dict[str, Any]
    per_item: pd.DataFrame
    table: list[MetricRow] = field(default_factory=list)


def load_split(params: Params, split: str, root: Path = Path(".")) -> SplitData:
    """The pairs of `split` and the paths of their media (from the ingest manifests)."""
    splits = read_table(root / SPLITS_TABLE)
    pairs = splits[splits["split"] == split].reset_index(drop=True)
    if pairs.empty:
        raise Art2MusError(f"{root / SPLITS_TABLE}: no pairs in split {split!r}")
    manifests = root / params.ingest.out_dir
    artworks = read_table(manifests / ARTWORKS_MANIFEST).set_index("artwork_id")
    tracks = read_table(manifests / TRACKS_MANIFEST).set_index("track_id")
    pairs["title"] = artworks.loc[pairs["artwork_id"], "title"].to_numpy()
    for column in ("style", "genre", "date"):  # the caption baseline's metadata
        if column not in pairs and column in artworks:
            pairs[column] = artworks.loc[pairs["artwork_id"], column].to_numpy()
    image_paths = [root / params.ingest.artgraph_dir / path for path in artworks.loc[pairs["artwork_id"], "path"]]
    track_paths = [root / params.ingest.fma_dir / path for path in tracks.loc[pairs["track_id"], "path"]]
    return SplitData(pairs, image_paths, track_paths)


def reference_crops(paths: list[Path], audio: AudioParams) -> list[np.ndarray]:
    """The model crop of every reference track (what the model was trained to produce)."""
    return [model_crop(read_mono(path, audio.sample_rate), audio) for path in paths]


@torch.no_grad()
def embed_images(pipeline: Art2MusPipeline, images: list, batch_size: int) -> torch.Tensor:
    return torch.cat([pipeline.encoder.embed_images(images[start: start + batch_size]).float()
                      for start in range(0, len(images), batch_size)]).to(pipeline.device)


@torch.no_grad()
def encode_latents(pipeline: Art2MusPipeline, waves: list[np.ndarray], audio: AudioParams) -> torch.Tensor:
    """Latents of the reference crops with the model's own codec."""
    transform = mel_transform(audio)
    return torch.cat([pipeline.backbone.codec.encode(log_mel(torch.from_numpy(np.stack(waves[start: start + VOCODE_BATCH])),
                                                             audio, transform)).float()
                      for start in range(0, len(waves), VOCODE_BATCH)])


def untrained_aligner(aligner: ImageAligner, seed: int) -> ImageAligner:
    """A freshly initialised aligner of the same architecture (a baseline)."""
    torch.manual_seed(seed)
    return ImageAligner.from_config(aligner.config).eval().to(aligner.device)


@torch.no_grad()
def baseline_tokens(aligner: ImageAligner, embeds: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Aligner tokens of each generating conditioning: the model, its mean, an untrained aligner."""
    tokens = aligner(embeds)
    return {"trained": tokens, "mean": tokens.mean(0, keepdim=True).expand_as(tokens).contiguous(),
            "untrained": untrained_aligner(aligner, seed)(embeds)}


@torch.no_grad()
def oracle_tokens(pipeline: Art2MusPipeline, latents: torch.Tensor) -> torch.Tensor | None:
    """The prior's own conditioning of each reference latent (None when the prior has no audio encoder)."""
    encoder = pipeline.backbone.audio_encoder
    return None if encoder is None else encoder(latents.to(pipeline.device))


def oracle_absent(pipeline: Art2MusPipeline) -> str:
    return (f"the prior ({pipeline.info.get('prior') or 'unknown'}) has no audio encoder to condition on a track; "
            "only the tiny prior is trained with one")


@torch.no_grad()
def references_vocoded(pipeline: Art2MusPipeline, latents: torch.Tensor, samples: int) -> list[np.ndarray]:
    """The references' latents (already encoded) decoded and vocoded, trimmed like generated clips."""
    backbone = pipeline.backbone
    return [wave for start in range(0, len(latents), VOCODE_BATCH)
            for wave in trimmed(backbone.vocoder(backbone.codec.decode_in_range(
                latents[start: start + VOCODE_BATCH].to(pipeline.device))), samples)]


@torch.no_grad()
def decision_scores(pipeline: Art2MusPipeline, data: SplitData, params: Params) -> pd.DataFrame:
    """Only the per-item scores the promotion decision pairs (no baselines, no generation): the same
    items, candidates, noise and timestep draws as `evaluate_model`, so the numbers are identical."""
    config, audio = params.evaluate, params.audio
    torch.set_num_threads(config.threads)
    n = len(data.pairs) if config.max_items is None else min(config.max_items, len(data.pairs))
    if n < config.k:
        raise Art2MusError(f"evaluate: {n} pairs in split {config.split!r}, need at least k={config.k}")
    images = [open_image(path) for path in data.image_paths[:n]]
    latents = encode_latents(pipeline, reference_crops(data.track_paths[:n], audio), audio)
    loa = pipeline.backbone.language_of_audio(pipeline.aligner(embed_images(pipeline, images, config.batch_size)))
    errors = error_matrix(pipeline.backbone, latents, loa, candidate_sets(n, config.k, config.seed), config.draws,
                          config.t_range, config.seed)
    return per_item_scores(data.pairs.head(n), summarise(errors, config.seed))


def correspondence_metrics(result: CorrespondenceResult) -> dict[str, Any]:
    return {"retrieval_top1": result.top1.as_dict(), "retrieval_top5": result.top5.as_dict(),
            "gap": result.gap.as_dict(), "chance_top1": result.chance_top1, "chance_top5": result.chance_top5}


def per_item_scores(pairs: pd.DataFrame, result: CorrespondenceResult) -> pd.DataFrame:
    """The model's per-track scores; the promotion decision pairs these across models by track."""
    errors = result.errors
    mismatched = errors[:, 1:].mean(axis=1)
    return pd.DataFrame({
        "artwork_id": pairs["artwork_id"].to_numpy(), "track_id": pairs["track_id"].to_numpy(),
        "retrieval_top1": hit_rate(errors, 1), "retrieval_top5": hit_rate(errors, min(5, errors.shape[1])),
        "gap": (mismatched - errors[:, 0]) / mismatched,
    })


@dataclass
class PlantedFactors:
    """The embedded sample's ground truth: factor levels per track, and the tracks the estimator learns from."""

    levels: pd.DataFrame  # MUSIC_FACTORS columns, indexed by track_id
    train: SplitData


def planted_factors(params: Params, root: Path = Path(".")) -> PlantedFactors | None:
    """The sample's factors.csv and train split when the data is the embedded sample, else None."""
    sample_dir = (root / params.sample.out_dir).resolve()
    fma_dir = (root / params.ingest.fma_dir).resolve()
    path = sample_dir / "factors.csv"
    if not path.is_file() or not fma_dir.is_relative_to(sample_dir):
        return None
    levels = read_table(path).dropna(subset=["track_id"]).astype({"track_id": "int64"}).set_index("track_id")
    return PlantedFactors(levels[list(MUSIC_FACTORS)], load_split(params, "train", root))


def wave_statistics(waves: list[np.ndarray]) -> dict[str, float]:
    """Loudness and clipping of a generated set: sanity, not quality."""
    rms = np.array([np.sqrt(np.mean(wave**2)) for wave in waves])
    peaks = np.array([np.abs(wave).max() for wave in waves])
    return {"rms_mean": float(rms.mean()), "rms_min": float(rms.min()), "peak_max": float(peaks.max()),
            "clipped_fraction": float((peaks >= 0.999).mean())}


def generation_metrics(
    generated: list[np.ndarray], references: list[np.ndarray], images: list, pipeline: Art2MusPipeline,
    config: EvaluateParams, sample_rate: int,
) -> dict[str, Any]:
    """FAD, ImageBindScore (AM only in a shared space) and the tagger KL of one generated set."""
    spec = config.fad_embedder
    embedder = load_frame_embedder(spec.name, spec.source, spec.revision, postprocess=spec.postprocess)
    name = metric_name(config.fad_embedder.name)
    fad = fad_sets(embed_waveforms(references, sample_rate, embedder), embed_waveforms(generated, sample_rate, embedder),
                   name=name, embedder_id=embedder.embedder_id, n_boot=config.fad_resamples, seed=config.seed)
    scorer = load_audio_embedder(config.score_embedder)
    shared = pipeline.encoder.shared_space is not None and pipeline.encoder.shared_space == scorer.shared_space
    score = image_bind_score_of(scorer, generated, sample_rate, references=references, seed=config.seed,
                                image_encoder=pipeline.encoder if shared else None, images=images if shared else None)
    scores = score.as_dict()
    if not shared:
        scores["am_absent"] = (f"AM needs a shared image-audio space; image encoder {pipeline.encoder.encoder_id} and "
                               f"audio embedder {scorer.encoder_id} declare none in common")
    kl = kl_score(references, generated, sample_rate, config.tagger, seed=config.seed)
    return {name: fad.as_dict(), "imagebind_score": scores, "kl": kl.as_dict(), **wave_statistics(generated)}


def metric_cell(interval: dict[str, float] | None, note: str = "", valid: bool = True) -> dict[str, Any]:
    if interval is None:
        return {"value": None, "valid": False, "note": note or "absent"}
    return {"value": interval["value"], "low": interval.get("low"), "high": interval.get("high"), "valid": valid,
            "note": note}


def generation_cells(generated: dict[str, Any], fad_name: str) -> dict[str, dict[str, Any]]:
    """FAD, ImageBindScore MM and planted-factor accuracy of one generated set, as table cells."""
    fad = generated[fad_name]
    cells = {fad_name: metric_cell(fad, fad["reason"], fad["valid"]),
             "mm": metric_cell(generated["imagebind_score"]["mm"])}
    for factor, score in generated.get("planted", {}).items():
        cells[f"planted_{factor}"] = metric_cell(score["accuracy"], f"chance {score['chance']:.2f}")
    return cells


def comparison_table(metrics: dict[str, Any], fad_name: str) -> list[MetricRow]:
    """One row per conditioning: correspondence, FAD, ImageBindScore MM and planted-factor accuracy;
    generation-only rows (the caption baseline) after them, an absent caption baseline with its reason."""
    rows = []
    for model, found in metrics["correspondence"].items():
        cells = {"retrieval_top1": metric_cell(found["retrieval_top1"]), "gap": metric_cell(found["gap"])}
        generated = metrics["generation"].get(model)
        if generated is not None:
            cells.update(generation_cells(generated, fad_name))
        rows.append(MetricRow(model=model, metrics=cells))
    for model, generated in metrics["generation"].items():
        if model not in metrics["correspondence"]:
            rows.append(MetricRow(model=model, metrics=generation_cells(generated, fad_name)))
    for model, reason in metrics.get("generation_absent", {}).items():
        rows.append(MetricRow(model=model, metrics={fad_name: metric_cell(None, f"absent: {reason}")}))
    captions = metrics.get("caption_baseline", {})
    if captions.get("status") == "absent":
        rows.append(MetricRow(model=CAPTION_BASELINE,
                              metrics={fad_name: metric_cell(None, f"absent: {captions['reason']}")}))
    return rows


def evaluate_model(pipeline: Art2MusPipeline, data: SplitData, params: Params, out_dir: Path | None = None,
                   planted: PlantedFactors | None = None, meta: dict[str, Any] | None = None) -> Evaluation:
    """Evaluate `pipeline` on `data`; with `out_dir`, write metrics, per-item scores, plots, WAVs and the report.

    With `planted` (the embedded sample), the generated clips are also read by the planted-factor estimator.
    """
    config, audio = params.evaluate, params.audio
    torch.set_num_threads(config.threads)
    n = len(data.pairs) if config.max_items is None else min(config.max_items, len(data.pairs))
    if n < config.k:
        raise Art2MusError(f"evaluate: {n} pairs in split {config.split!r}, need at least k={config.k}")
    pairs, image_paths, track_paths = data.pairs.head(n), data.image_paths[:n], data.track_paths[:n]
    images = [open_image(path) for path in image_paths]
    references = reference_crops(track_paths, audio)
    embeds = embed_images(pipeline, images, config.batch_size)
    latents = encode_latents(pipeline, references, audio)
    logger.info("evaluate: correspondence on %d %s pairs", n, config.split)
    results = compare_conditioning(
        pipeline.backbone, pipeline.aligner, embeds, latents, lambda seed: untrained_aligner(pipeline.aligner, seed),
        k=config.k, draws=config.draws, t_range=config.t_range, seed=config.seed,
        untrained_seeds=tuple(config.untrained_seeds))
    generation = GenerationConfig(scheduler=config.scheduler, steps=config.steps, guidance_scale=config.guidance_scale,
                                  seconds=config.seconds, seed=config.seed, batch_size=config.batch_size)
    logger.info("evaluate: generating %d clips for each of %s", n, ", ".join(config.generate))
    tokens = baseline_tokens(pipeline.aligner, embeds, config.untrained_seeds[0])
    absent: dict[str, str] = {}
    if ORACLE in config.generate:
        oracle = oracle_tokens(pipeline, latents)
        if oracle is None:
            absent[ORACLE] = oracle_absent(pipeline)
        else:
            tokens[ORACLE] = oracle
    generated: dict[str, list[np.ndarray]] = {name: pipeline.render(tokens[name], generation) for name in GENERATING
                                              if name in tokens and name in config.generate}
    caption_waves, captions = caption_baseline(pipeline, pairs, config, generation)
    if caption_waves is not None:
        generated[CAPTION_BASELINE] = caption_waves
    if REFERENCES_VOCODED in config.generate:
        generated[REFERENCES_VOCODED] = references_vocoded(pipeline, latents, len(references[0]))
    metrics: dict[str, Any] = {
        "split": config.split, "items": n, "k": config.k, "draws": config.draws, "seed": config.seed,
        "model": {key: pipeline.info.get(key) for key in ("weights_sha256", "prior", "image_encoder_id")},
        "correspondence": {name: correspondence_metrics(result) for name, result in results.items()},
        "generation": {name: generation_metrics(waves, references, images, pipeline, config, pipeline.sample_rate)
                       for name, waves in generated.items()},
        "caption_baseline": captions,
    }
    if absent:
        metrics["generation_absent"] = absent
    if planted is not None and config.planted_tracks > 0:
        chosen = np.sort(np.random.default_rng(config.seed).permutation(len(planted.train.track_paths))
                         [: config.planted_tracks])
        estimator = fit_factor_estimator([planted.train.track_paths[i] for i in chosen],
                                         planted.levels.loc[planted.train.pairs["track_id"].iloc[chosen]],
                                         pipeline.backbone, audio, seed=config.seed)
        wanted = planted.levels.loc[pairs["track_id"]].reset_index(drop=True)
        for name, waves in generated.items():
            metrics["generation"][name]["planted"] = {
                score.factor: score.as_dict() for score in estimator.score(waves, wanted, audio, config.seed)}
    evaluation = Evaluation(metrics, per_item_scores(pairs, results["trained"]),
                            comparison_table(metrics, metric_name(config.fad_embedder.name)))
    if out_dir is not None:
        write_evaluation(out_dir, evaluation, pairs, image_paths, track_paths, generated["trained"],
                         pipeline.sample_rate, config, {**(meta or {}), **metrics["model"]})
    return evaluation


def plot_tables(metrics: dict[str, Any], fad_name: str) -> dict[str, pd.DataFrame]:
    """`dvc plots` data: retrieval and gap per conditioning, FAD per generating conditioning."""
    rows = [{"model": model, "metric": metric, **found[metric]}
            for model, found in metrics["correspondence"].items() for metric in ("retrieval_top1", "gap")]
    fad = [{"model": model, "value": found[fad_name]["value"], "low": found[fad_name]["low"],
            "high": found[fad_name]["high"]} for model, found in metrics["generation"].items()]
    return {"correspondence.csv": pd.DataFrame(rows), "fad.csv": pd.DataFrame(fad)}


def write_evaluation(out_dir: Path, evaluation: Evaluation, pairs: pd.DataFrame, image_paths: list[Path],
                     track_paths: list[Path], generated: list[np.ndarray], sample_rate: int,
                     config: EvaluateParams, meta: dict[str, Any]) -> None:
    """The whole output folder, atomically: metrics.json, per_item.parquet, plots/, generated/, report/."""
    fad_name = metric_name(config.fad_embedder.name)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        write_json_atomic(evaluation.metrics, tmp / METRICS_FILE)
        evaluation.per_item.to_parquet(tmp / PER_ITEM_FILE, index=False)
        (tmp / PLOTS_DIR).mkdir()
        for name, table in plot_tables(evaluation.metrics, fad_name).items():
            table.to_csv(tmp / PLOTS_DIR / name, index=False)
        wav_names = [f"{index:04d}.wav" for index in range(len(generated))]
        (tmp / GENERATED_DIR).mkdir()
        for name, wave in zip(wav_names, generated):
            write_wav(wave, sample_rate, tmp / GENERATED_DIR / name)
        pairs.assign(wav=wav_names).to_csv(tmp / GENERATED_DIR / "index.csv", index=False)
        shown = min(config.report_items, len(generated))
        items = [ReportItem(artwork_id=str(row.artwork_id), title=str(row.title), artist=str(row.artist),
                            image=image_paths[i], generated=tmp / GENERATED_DIR / wav_names[i], reference=track_paths[i])
                 for i, row in enumerate(pairs.head(shown).itertuples())]
        write_report(tmp / REPORT_DIR, items, evaluation.table, f"art2mus evaluation ({config.split} split)",
                     {**meta, "split": config.split, "items": len(generated), "seed": config.seed})


def summary_line(metrics: dict[str, Any]) -> str:
    """One line for people: the model's retrieval and gap against chance and the baselines."""
    trained = metrics["correspondence"]["trained"]
    top1 = trained["retrieval_top1"]
    return (f"retrieval top-1 {top1['value']:.3f} [{top1['low']:.3f}, {top1['high']:.3f}] "
            f"(chance {trained['chance_top1']:.3f}), gap {trained['gap']['value']:.4f} "
            f"[{trained['gap']['low']:.4f}, {trained['gap']['high']:.4f}] on {metrics['items']} {metrics['split']} pairs")


def read_metrics(out_dir: Path) -> dict[str, Any]:
    return read_json(Path(out_dir) / METRICS_FILE)


def evaluate_uri(model: str, params: Params, split: str | None = None, out_dir: Path | None = None,
                 root: Path = Path(".")) -> tuple[Evaluation, Path]:
    """`art2mus evaluate --model`: any model (a folder, runs:/ or models:/ URI) on a split of this project.

    The output goes to `out_dir`, by default `<evaluate.out_dir>-<split>-<weights hash>` beside the stage's.
    """
    if split is not None:
        params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"split": split})})
    pipeline = Art2MusPipeline.from_pretrained(resolve_model_dir(model))
    weights = str(pipeline.info.get("weights_sha256") or "unknown")[:12]
    out_dir = out_dir or root / f"{params.evaluate.out_dir}-{params.evaluate.split}-{weights}"
    evaluation = evaluate_model(pipeline, load_split(params, params.evaluate.split, root), params, out_dir,
                                planted_factors(params, root), meta={"model": model})
    return evaluation, out_dir
