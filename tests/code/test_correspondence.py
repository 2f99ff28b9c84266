"""Retrieval scoring: ties share ranks, CIs bracket the mean, candidates exclude the track's own."""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from art2mus.evaluation.correspondence import bootstrap_interval, candidate_sets, error_matrix, hit_rate, summarise


def test_hit_rate_counts_wins_losses_and_ties_fairly() -> None:
    errors = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.2, 0.2, 0.2], [0.2, 0.1, 0.2]])
    assert hit_rate(errors, 1).tolist() == pytest.approx([1.0, 0.0, 1 / 3, 0.0])
    # Row 4: beaten once and tied once, so rank 2 or 3 with equal chance.
    assert hit_rate(errors, 2).tolist() == pytest.approx([1.0, 0.0, 2 / 3, 0.5])


def test_identical_conditioning_scores_exactly_chance_and_no_gap() -> None:
    result = summarise(np.full((50, 8), 0.5))
    assert result.top1.value == pytest.approx(1 / 8) and result.gap.value == 0.0


def test_candidates_start_with_the_own_artwork_and_never_repeat_it() -> None:
    sets = candidate_sets(20, 8, seed=0)
    assert (sets[:, 0] == np.arange(20)).all()
    assert all(len(set(row)) == 8 and row[0] not in row[1:] for row in sets)
    with pytest.raises(ValueError, match="needs at least 8"):
        candidate_sets(5, 8, seed=0)


def test_bootstrap_interval_brackets_the_mean() -> None:
    interval = bootstrap_interval(np.random.default_rng(0).normal(1.0, 0.1, 200))
    assert interval.low < interval.value < interval.high and abs(interval.value - 1.0) < 0.05


@dataclass
class CountingBackbone:
    """error_matrix's view of a backbone: a prediction that depends on the conditioning, with its calls counted."""

    scheduler: DDPMScheduler = field(default_factory=lambda: DDPMScheduler(prediction_type="v_prediction"))
    device: torch.device = torch.device("cpu")
    items: int = 0

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, loa: torch.Tensor) -> torch.Tensor:
        self.items += len(noisy)
        return noisy * loa.mean(dim=(1, 2)).view(-1, *[1] * (noisy.dim() - 1))


def test_each_distinct_conditioning_of_a_track_goes_through_the_unet_once() -> None:
    latents = torch.randn(12, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    loa = torch.randn(12, 3, 5, generator=torch.Generator().manual_seed(1))
    candidates = candidate_sets(12, 4, seed=0)
    distinct = CountingBackbone()
    errors = error_matrix(distinct, latents, loa, candidates, draws=3, batch=7)
    assert distinct.items == 12 * 4 * 3 and len(np.unique(errors)) == errors.size

    mean = CountingBackbone()
    same = error_matrix(mean, latents, loa.mean(0, keepdim=True).expand_as(loa).contiguous(), candidates, draws=3, batch=7)
    assert mean.items == 12 * 3  # one conditioning per track, not 4
    assert (same == same[:, :1]).all()  # exact ties: retrieval exactly at chance
    assert summarise(same).top1.value == pytest.approx(1 / 4)

    twins = loa.clone()
    twins[5] = twins[3]  # two artworks with one conditioning: where both are candidates of a track, one pass
    shared = sum(3 in row and 5 in row for row in candidates)
    counted = CountingBackbone()
    paired = error_matrix(counted, latents, twins, candidates, draws=3, batch=7)
    assert counted.items == (12 * 4 - shared) * 3
    rows, cols3 = np.nonzero(candidates == 3)
    for row, col in zip(rows, cols3):
        if 5 in candidates[row]:
            assert paired[row, col] == paired[row, list(candidates[row]).index(5)]
    untouched = [i for i, row in enumerate(candidates) if 5 not in row]
    np.testing.assert_array_equal(paired[untouched], errors[untouched])
