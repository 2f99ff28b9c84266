"""Does the image steer the music? Latent-fixed ε-MSE under matched vs mismatched conditioning.

Method (see shared/docs/learnability-notes.md): hold each test track's latent fixed and compare its
denoising error under its own artwork's conditioning with its error under K-1 other artworks',
using the same noise and timestep draws for every candidate. The gap is small (a few % of the
error), so everything is paired and reported with bootstrap confidence intervals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from art2mus.models.backbone import Backbone
from art2mus.training.diffusion import diffusion_target, per_sample_mse


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class CorrespondenceResult:
    """Per-track errors and the summary statistics of one conditioning source."""

    errors: np.ndarray  # [N, K]: column 0 is the track's own artwork
    top1: Interval
    top5: Interval
    gap: Interval  # mean over tracks of (mismatched mean - matched) / mismatched mean; > 0: own is better
    chance_top1: float
    chance_top5: float

    def summary(self) -> dict[str, object]:
        return {"top1": self.top1.as_dict(), "top5": self.top5.as_dict(), "gap": self.gap.as_dict(),
                "chance_top1": self.chance_top1, "chance_top5": self.chance_top5, "tracks": len(self.errors),
                "candidates": self.errors.shape[1]}


def bootstrap_interval(values: np.ndarray, seed: int = 0, resamples: int = 2000, level: float = 0.95) -> Interval:
    """Percentile bootstrap CI of the mean of `values` (resampling items)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return Interval(float(values.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)))


def candidate_sets(n: int, k: int, seed: int) -> np.ndarray:
    """[n, k] indices: row i starts with i (its own artwork), then k-1 distinct others."""
    if k > n:
        raise ValueError(f"retrieval among {k} needs at least {k} test pairs, got {n}")
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        others = rng.choice(np.delete(np.arange(n), i), size=k - 1, replace=False)
        rows.append(np.concatenate([[i], others]))
    return np.stack(rows)


def fixed_draws(latents: torch.Tensor, draws: int, t_range: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, draws, ...] noise and [N, draws] timesteps, shared by every candidate of a track."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((latents.shape[0], draws, *latents.shape[1:]), generator=generator)
    timesteps = torch.randint(t_range[0], t_range[1], (latents.shape[0], draws), generator=generator)
    return noise, timesteps


# Latent elements per UNet batch: 128 tiny latents (32x32x16), 64 of AudioLDM2's 10.24 s ones (8x256x16,
# about 5.5 GiB of activations without gradients); the batch does not change the errors.
BATCH_ELEMENTS = 64 * 8 * 256 * 16


def error_batch(latents: torch.Tensor) -> int:
    """Jobs per UNet call, by memory: a fixed budget of latent elements."""
    return max(1, BATCH_ELEMENTS // max(1, latents[0].numel()))


def first_of_equal_columns(candidates: np.ndarray, loa: torch.Tensor) -> np.ndarray:
    """[N, K]: for each candidate, the first column of its row whose conditioning is the same tensor
    (mean conditioning: every column), so each distinct conditioning goes through the UNet once."""
    _, distinct = torch.unique(loa.reshape(len(loa), -1).cpu(), dim=0, return_inverse=True)
    ids = distinct.numpy()[candidates]
    return np.argmax(ids[:, :, None] == ids[:, None, :], axis=2)


@torch.no_grad()
def error_matrix(
    backbone: Backbone, latents: torch.Tensor, loa: torch.Tensor, candidates: np.ndarray,
    draws: int = 8, t_range: tuple[int, int] = (300, 900), seed: int = 0, batch: int | None = None,
) -> np.ndarray:
    """[N, K]: track i's mean error (over fixed draws) under candidate artwork candidates[i, k]'s LOA.

    Draws come from a seeded CPU generator and move to the backbone's device batch by batch, so a seed
    gives the same errors on CPU and GPU. Candidates of a track with equal LOA share one UNet pass per draw.
    """
    noise, timesteps = fixed_draws(latents.cpu(), draws, t_range, seed)
    device = backbone.device
    latents, loa = latents.to(device), loa.to(device)
    n, k = candidates.shape
    first = first_of_equal_columns(candidates, loa)
    jobs = [(i, j, d) for i in range(n) for j in range(k) if first[i, j] == j for d in range(draws)]
    errors = torch.zeros(n, k, draws)
    batch = batch or error_batch(latents)
    for start in range(0, len(jobs), batch):
        chunk = jobs[start: start + batch]
        i = torch.tensor([job[0] for job in chunk])
        j = torch.tensor([job[1] for job in chunk])
        d = torch.tensor([job[2] for job in chunk])
        clean = latents[i.to(device)]
        eps = noise[i, d].to(device, clean.dtype)
        t = timesteps[i, d].to(device)
        noisy = backbone.scheduler.add_noise(clean, eps, t)
        conditioning = loa[torch.as_tensor(candidates)[i, j].to(device)]
        prediction = backbone.predict(noisy, t, conditioning)
        errors[i, j, d] = per_sample_mse(prediction, diffusion_target(backbone.scheduler, clean, eps, t)).cpu()
    errors = errors[torch.arange(n)[:, None], torch.from_numpy(first)]  # equal conditionings: equal errors
    return errors.mean(dim=2).numpy()


def hit_rate(errors: np.ndarray, top: int) -> np.ndarray:
    """Per track: the probability that its own artwork ranks within `top` (ties broken at random)."""
    own = errors[:, :1]
    better = (errors[:, 1:] < own).sum(axis=1)
    tied = (errors[:, 1:] == own).sum(axis=1)
    # Own sits uniformly among its tied group: positions better+1 .. better+tied+1.
    slots = np.clip(top - better, 0, tied + 1)
    return slots / (tied + 1)


def summarise(errors: np.ndarray, seed: int = 0) -> CorrespondenceResult:
    """Retrieval top-1/top-5 and the matched-vs-mismatched gap, with bootstrap CIs over tracks."""
    k = errors.shape[1]
    mismatched = errors[:, 1:].mean(axis=1)
    relative_gap = (mismatched - errors[:, 0]) / mismatched
    return CorrespondenceResult(
        errors=errors,
        top1=bootstrap_interval(hit_rate(errors, 1), seed),
        top5=bootstrap_interval(hit_rate(errors, min(5, k)), seed + 1),
        gap=bootstrap_interval(relative_gap, seed + 2),
        chance_top1=1 / k,
        chance_top5=min(5, k) / k,
    )


def summarise_pooled(error_matrices: list[np.ndarray], seed: int = 0) -> CorrespondenceResult:
    """One result over several conditioning draws (e.g. random inits): per-track rates averaged first."""
    first = error_matrices[0]
    k = first.shape[1]
    hits1 = np.mean([hit_rate(errors, 1) for errors in error_matrices], axis=0)
    hits5 = np.mean([hit_rate(errors, min(5, k)) for errors in error_matrices], axis=0)
    gaps = np.mean([(e[:, 1:].mean(1) - e[:, 0]) / e[:, 1:].mean(1) for e in error_matrices], axis=0)
    return CorrespondenceResult(
        errors=np.stack(error_matrices).mean(axis=0),
        top1=bootstrap_interval(hits1, seed), top5=bootstrap_interval(hits5, seed + 1),
        gap=bootstrap_interval(gaps, seed + 2), chance_top1=1 / k, chance_top5=min(5, k) / k,
    )


def loa_of_distinct(backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
    """The LOA of each row of tokens, computed once per distinct row: a batched GPT-2 can give equal rows
    different last bits, and error_matrix passes a conditioning through the UNet once only if it is equal."""
    distinct, inverse = torch.unique(tokens.reshape(len(tokens), -1), dim=0, return_inverse=True)
    if len(distinct) == len(tokens):
        return backbone.language_of_audio(tokens)  # as decision_scores computes it: the same bits
    return backbone.language_of_audio(distinct.view(-1, *tokens.shape[1:]))[inverse.to(tokens.device)]


@torch.no_grad()
def compare_conditioning(
    backbone: Backbone, aligner: torch.nn.Module, image_embeds: torch.Tensor, latents: torch.Tensor,
    make_untrained, k: int = 8, draws: int = 8, t_range: tuple[int, int] = (300, 900), seed: int = 0,
    untrained_seeds: tuple[int, ...] = (1, 2),
) -> dict[str, CorrespondenceResult]:
    """The trained aligner against its baselines on the same candidates and draws.

    - `trained`: the aligner; `oracle` (tiny profile): the prior's own audio encoder on the track's
      latent — the ceiling; `mean`: one conditioning for every image (the mean of the aligner's
      tokens) — chance by construction; `untrained`: random aligners (`make_untrained(seed)`),
      pooled over several inits, since one random map can sit consistently above or below chance.
    """
    candidates = candidate_sets(len(latents), k, seed)

    def errors_for(tokens: torch.Tensor) -> np.ndarray:
        return error_matrix(backbone, latents, loa_of_distinct(backbone, tokens), candidates, draws, t_range, seed)

    tokens = aligner(image_embeds.to(backbone.device))
    results = {
        "trained": summarise(errors_for(tokens), seed),
        "mean": summarise(errors_for(tokens.mean(0, keepdim=True).expand_as(tokens).contiguous()), seed),
        "untrained": summarise_pooled([errors_for(make_untrained(s).to(backbone.device)(image_embeds.to(backbone.device)))
                                       for s in untrained_seeds], seed),
    }
    if backbone.audio_encoder is not None:
        results["oracle"] = summarise(errors_for(backbone.audio_encoder(latents.to(backbone.device))), seed)
    return results
