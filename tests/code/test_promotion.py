"""The promotion rule: first run by floors, a better challenger promoted, a worse or equal one not."""

from __future__ import annotations

import numpy as np
import pytest

from art2mus.config import ConfigError, MetricRule, PromotionParams, parse_params
from art2mus.errors import Art2MusError
from art2mus.tracking.promotion import decide, lower_bound

N = 80  # about the sample's test split


def hits(rate: float, seed: int) -> np.ndarray:
    """Per-item top-1 hit indicators with the given rate (exactly round(rate * N) hits)."""
    values = np.zeros(N)
    values[np.random.default_rng(seed).permutation(N)[: round(rate * N)]] = 1.0
    return values


def scores(top1: float, gap: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    return {"retrieval_top1": hits(top1, seed), "gap": gap + rng.normal(0, 0.02, N)}


PARAMS = PromotionParams()


def test_first_run_is_decided_by_the_floors_alone() -> None:
    good = decide(scores(0.30, 0.01, 0), None, PARAMS)
    assert good.promote and any("no champion" in reason for reason in good.reasons)
    assert good.numbers["retrieval_top1.floor"] == 0.25
    low = decide(scores(0.20, 0.05, 0), None, PARAMS)
    assert not low.promote and "retrieval_top1: failed the floor" in low.reasons[0]


def test_a_clearly_better_challenger_is_promoted() -> None:
    champion = scores(0.30, 0.02, 1)
    challenger = {"retrieval_top1": np.maximum(champion["retrieval_top1"], hits(0.35, 2)),
                  "gap": champion["gap"] + 0.01}
    decision = decide(challenger, champion, PARAMS)
    assert decision.promote, decision.reasons
    assert decision.numbers["retrieval_top1.lower_bound"] > 0
    assert decision.numbers["gap.improvement"] == pytest.approx(0.01)


def test_an_equal_challenger_is_not_promoted() -> None:
    champion = scores(0.40, 0.02, 3)
    decision = decide(champion, champion, PARAMS)
    assert not decision.promote
    assert decision.numbers["retrieval_top1.lower_bound"] == 0.0
    assert any(reason.startswith("retrieval_top1: failed:") for reason in decision.reasons)


def test_a_worse_challenger_is_not_promoted_even_above_the_floor() -> None:
    champion = scores(0.60, 0.03, 4)
    challenger = {"retrieval_top1": champion["retrieval_top1"] * hits(0.7, 5), "gap": champion["gap"] - 0.02}
    decision = decide(challenger, champion, PARAMS)
    assert not decision.promote
    assert decision.numbers["retrieval_top1.challenger"] >= 0.25  # the floor alone would have passed it
    assert [reason.split(":")[0] for reason in decision.reasons if "failed" in reason] == ["retrieval_top1", "gap"]


def test_a_tolerated_regression_passes_only_within_its_margin() -> None:
    champion = scores(0.30, 0.02, 6)
    better_top1 = np.maximum(champion["retrieval_top1"], hits(0.4, 7))
    slightly_worse = decide({"retrieval_top1": better_top1, "gap": champion["gap"] - 0.002}, champion, PARAMS)
    much_worse = decide({"retrieval_top1": better_top1, "gap": champion["gap"] - 0.02}, champion, PARAMS)
    assert slightly_worse.promote and not much_worse.promote


def test_lower_is_better_metrics_flip_the_sign() -> None:
    params = PromotionParams(metrics={"fad": MetricRule(direction="lower")}, floors={"fad": 5.0})
    champion = {"fad": np.full(N, 4.0) + np.random.default_rng(8).normal(0, 0.1, N)}
    assert decide({"fad": champion["fad"] - 0.5}, champion, params).promote
    assert not decide({"fad": champion["fad"] + 0.5}, champion, params).promote
    assert not decide({"fad": np.full(N, 6.0)}, None, params).promote  # above the ceiling


def test_the_decision_is_deterministic_and_the_bound_is_one_sided() -> None:
    champion, challenger = scores(0.3, 0.02, 9), scores(0.4, 0.03, 10)
    assert decide(challenger, champion, PARAMS) == decide(challenger, champion, PARAMS)
    differences = np.random.default_rng(11).normal(0.05, 0.2, 400)
    low95 = lower_bound(differences, 0.95, 9999, 0)
    low99 = lower_bound(differences, 0.99, 9999, 0)
    standard_error = differences.std(ddof=1) / np.sqrt(len(differences))
    assert low99 < low95 < differences.mean()
    assert low95 == pytest.approx(differences.mean() - 1.645 * standard_error, abs=0.2 * standard_error)


def test_unpaired_or_missing_scores_are_refused() -> None:
    champion = scores(0.3, 0.02, 12)
    with pytest.raises(Art2MusError, match="not paired: 79 challenger items vs 80 champion items"):
        decide({name: values[:-1] for name, values in champion.items()}, champion, PARAMS)
    with pytest.raises(Art2MusError, match="no challenger scores for metric 'gap'"):
        decide({"retrieval_top1": champion["retrieval_top1"]}, None, PARAMS)
    with pytest.raises(Art2MusError, match="non-finite"):
        decide({**champion, "gap": np.full(N, np.nan)}, champion, PARAMS)


def test_the_config_demands_a_metric_that_must_win_and_floors_on_declared_metrics() -> None:
    with pytest.raises(ConfigError, match="at least one metric needs min_improvement >= 0"):
        parse_params({"promotion": {"metrics": {"gap": {"min_improvement": -0.1}}, "floors": {}}})
    with pytest.raises(ConfigError, match="floors on undeclared metrics: fad"):
        parse_params({"promotion": {"floors": {"fad": 1.0}}})
