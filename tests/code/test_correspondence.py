"""Retrieval scoring: ties share ranks, CIs bracket the mean, candidates exclude the track's own."""

import numpy as np
import pytest

from art2mus.evaluation.correspondence import bootstrap_interval, candidate_sets, hit_rate, summarise


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
