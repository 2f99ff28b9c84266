"""The promotion decision: does the challenger beat the champion, with confidence, on the same items?

The rule (params.yaml `promotion`, `PromotionParams`):

1. Inputs are paired: for every declared metric, one score per evaluation item (e.g. per test track)
   for the challenger and for the champion, computed on the same items in the same order with the
   same noise and timestep draws. Row i of both arrays is the same item.
2. Per metric, the improvement of item i is d_i = challenger_i - champion_i, negated for
   `direction: lower`, so a positive d is always better. Its mean gets a one-sided lower confidence
   bound L at level `confidence` from a seeded paired bootstrap (items resampled together; BCa).
3. The challenger wins only if L > `min_improvement` for every declared metric. A metric with
   min_improvement >= 0 must improve with confidence; one with min_improvement < 0 may regress, but
   not by more than |min_improvement| with confidence (a non-inferiority margin). The config demands
   at least one metric with min_improvement >= 0, so a challenger indistinguishable from the champion
   never wins (its L is about 0, never above 0).
4. Floors bound the challenger's own mean (at least the floor; at most, for `direction: lower`) on
   every decision. The floor uses the mean, not a bound: it is a sanity limit, the comparison above
   is where confidence is demanded.
5. First run (no champion): floors only.

The quality gates and the pyfunc smoke test are the flow's and the registry's business; this module
is a pure function of the scores.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from art2mus.config import MetricRule, PromotionParams
from art2mus.errors import Art2MusError


@dataclass(frozen=True)
class Decision:
    """Whether to promote, why (one line per check), and the numbers behind it."""

    promote: bool
    reasons: list[str]
    numbers: dict[str, float] = field(default_factory=dict)


def scores_array(scores: Mapping[str, np.ndarray], metric: str, who: str) -> np.ndarray:
    """One metric's per-item scores as a finite 1-D float array, or a clear error."""
    if metric not in scores:
        raise Art2MusError(f"promotion: no {who} scores for metric {metric!r} "
                           f"(declared in params.yaml promotion.metrics; got {sorted(scores)})")
    values = np.asarray(scores[metric], dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise Art2MusError(f"promotion: {who} {metric} must be a non-empty 1-D array of per-item scores, "
                           f"got shape {values.shape}")
    if not np.isfinite(values).all():
        raise Art2MusError(f"promotion: {who} {metric} has {int((~np.isfinite(values)).sum())} non-finite score(s)")
    return values


def lower_bound(differences: np.ndarray, confidence: float, resamples: int, seed: int) -> float:
    """One-sided lower confidence bound of the mean difference (paired bootstrap, BCa)."""
    from scipy.stats import bootstrap

    if np.ptp(differences) == 0:  # every item moved by the same amount: nothing to resample
        return float(differences[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa warns on heavily tied data; the bound is still defined
        result = bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=confidence,
                           alternative="greater", method="BCa", rng=np.random.default_rng(seed))
    low = float(result.confidence_interval.low)
    if np.isnan(low):  # BCa can be undefined on degenerate resamples; percentile is not
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=confidence,
                               alternative="greater", method="percentile", rng=np.random.default_rng(seed))
        low = float(result.confidence_interval.low)
    return low


def compare_metric(name: str, rule: MetricRule, challenger: np.ndarray, champion: np.ndarray,
                   params: PromotionParams) -> tuple[bool, str, dict[str, float]]:
    """The paired comparison of one metric: passed, a one-line reason, its numbers."""
    if len(challenger) != len(champion):
        raise Art2MusError(f"promotion: {name} is not paired: {len(challenger)} challenger items vs "
                           f"{len(champion)} champion items (score both on the same split)")
    sign = 1.0 if rule.direction == "higher" else -1.0
    differences = sign * (challenger - champion)
    low = lower_bound(differences, params.confidence, params.resamples, params.seed)
    passed = low > rule.min_improvement
    kind = "improvement" if rule.min_improvement >= 0 else "regression margin"
    reason = (f"{name}: {'passed' if passed else 'failed'}: improvement {differences.mean():+.4f} "
              f"({params.confidence:.0%} lower bound {low:+.4f}) {'>' if passed else '<='} "
              f"required {rule.min_improvement:+.4f} ({kind}; {rule.direction} is better)")
    numbers = {f"{name}.challenger": float(challenger.mean()), f"{name}.champion": float(champion.mean()),
               f"{name}.improvement": float(differences.mean()), f"{name}.lower_bound": low,
               f"{name}.min_improvement": rule.min_improvement}
    return passed, reason, numbers


def check_floor(name: str, rule: MetricRule, floor: float, challenger: np.ndarray) -> tuple[bool, str, dict[str, float]]:
    """The challenger's own mean against its absolute floor (a ceiling for `direction: lower`)."""
    value = float(challenger.mean())
    passed = value >= floor if rule.direction == "higher" else value <= floor
    relation = ">=" if rule.direction == "higher" else "<="
    reason = (f"{name}: {'passed' if passed else 'failed'} the floor: {value:.4f} "
              f"{relation if passed else 'not ' + relation} {floor:.4f}")
    return passed, reason, {f"{name}.challenger": value, f"{name}.floor": floor}


def decide(challenger: Mapping[str, np.ndarray], champion: Mapping[str, np.ndarray] | None,
           params: PromotionParams) -> Decision:
    """Promote the challenger? `champion=None` is the first run: floors only (see the module docstring)."""
    passes, reasons, numbers = [], [], {}
    ours = {name: scores_array(challenger, name, "challenger") for name in params.metrics}
    numbers["items"] = float(len(next(iter(ours.values()))))
    for name, floor in params.floors.items():
        passed, reason, values = check_floor(name, params.metrics[name], floor, ours[name])
        passes.append(passed)
        reasons.append(reason)
        numbers.update(values)
    if champion is None:
        reasons.append("no champion yet: the floors decide")
    else:
        for name, rule in params.metrics.items():
            theirs = scores_array(champion, name, "champion")
            passed, reason, values = compare_metric(name, rule, ours[name], theirs, params)
            passes.append(passed)
            reasons.append(reason)
            numbers.update(values)
    return Decision(promote=all(passes), reasons=reasons, numbers=numbers)
