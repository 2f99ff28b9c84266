"""The verdict on a registered version: licence policy first, then scoring against the champion on the same
items and draws, the decision (art2mus.tracking.promotion, a pure function of the scores), and moving
`champion` when it wins.

A verdict is recorded on the version (`validation_status`, `decision.*` tags) with a key of what it
depends on besides the challenger (the champion, the promotion rule, the evaluation params), so a
retrain with nothing changed does not decide again; a version that was champion before is never
re-promoted automatically (a rollback sticks).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from art2mus.config import Params
from art2mus.errors import Art2MusError
from art2mus.io import read_table
from art2mus.tracking.licences import LicenceBlocked, check_licences, version_licences
from art2mus.tracking.promotion import decide
from art2mus.tracking.registry import (
    MODEL_NAME,
    ChampionChanged,
    champion_version,
    get_version,
    promote,
    record_validation,
    set_challenger,
)
from art2mus.workspace import DECISION_KEY_TAG, MODEL_DIR, PROMOTED_AT_TAG, ROLLED_BACK_AT_TAG, VALIDATION_TAG, VersionTags

if TYPE_CHECKING:
    import pandas as pd

DECIDED = ("passed", "failed", "awaiting_approval")
Logger = logging.Logger | logging.LoggerAdapter


@dataclass
class Verdict:
    """What the decide step concluded about the candidate version."""

    status: str  # a VALIDATION_STATUSES value, or "champion" when it already is
    promote: bool
    champion: str | None  # the champion it was compared with
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)


def licence_blockers(model_version, params: Params) -> list[str]:
    """What in the version's licences forbids `promotion.intended_use` (empty: nothing)."""
    try:
        check_licences(version_licences(model_version.tags), params.promotion.intended_use,
                       str(model_version.version))
    except LicenceBlocked as blocked:
        return [str(blocked)]
    return []


def challenger_scores(root: Path, params: Params, weights: str) -> pd.DataFrame:
    """The evaluate stage's per-item scores of the registered model (checked to be of its weights)."""
    from art2mus.evaluation.evaluate import PER_ITEM_FILE, read_metrics  # torch: only when scoring

    out = root / params.evaluate.out_dir
    if not (out / PER_ITEM_FILE).is_file():
        raise Art2MusError(f"{out / PER_ITEM_FILE}: missing; the evaluate stage writes it (run dvc repro)")
    evaluated = read_metrics(out).get("model", {}).get("weights_sha256")
    if evaluated != weights:
        raise Art2MusError(f"{out}: evaluates weights {str(evaluated)[:12]}, but {MODEL_DIR} holds {weights[:12]} "
                           "(run dvc repro so that evaluate follows train)")
    return read_table(out / PER_ITEM_FILE)


def champion_scores(root: Path, params: Params, champion: str) -> pd.DataFrame:
    """The champion's per-item scores on the same items, candidates, noise and timestep draws."""
    # torch and diffusers: only when scoring the champion
    from art2mus.evaluation.evaluate import decision_scores, load_split
    from art2mus.generation import resolve_model_dir
    from art2mus.models.pipeline import Art2MusPipeline

    pipeline = Art2MusPipeline.from_pretrained(resolve_model_dir(f"models:/{MODEL_NAME}/{champion}"))
    return decision_scores(pipeline, load_split(params, params.evaluate.split, root), params)


def paired(ours: pd.DataFrame, theirs: pd.DataFrame, metrics: list[str]) -> tuple[dict, dict]:
    """Both models' scores per metric, row i the same (artwork, track) item for both."""
    keys = ["artwork_id", "track_id"]
    merged = ours.merge(theirs, on=keys, how="inner", suffixes=("", "_champion"))
    if len(merged) != len(ours) or len(merged) != len(theirs):
        raise Art2MusError(f"promotion: the challenger's {len(ours)} evaluated items and the champion's {len(theirs)} "
                           f"share only {len(merged)} (evaluate both on the same split with the same params)")
    return ({name: merged[name].to_numpy() for name in metrics},
            {name: merged[f"{name}_champion"].to_numpy() for name in metrics})


def decision_key(champion: str | None, params: Params) -> str:
    """What a verdict depends on besides the challenger itself: the champion, the rule, the evaluation."""
    inputs = {"champion": champion, "promotion": params.promotion.model_dump(mode="json"),
              "evaluate": params.evaluate.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def previous_verdict(model_version, champion: str | None, params: Params) -> Verdict | None:
    """The verdict that still holds for an already registered version, None when it must be decided."""
    tags = model_version.tags
    if champion == str(model_version.version):
        return Verdict("champion", False, champion, [f"version {champion} is the champion"])
    if PROMOTED_AT_TAG in tags:
        how = f"rolled back at {tags[ROLLED_BACK_AT_TAG]}" if ROLLED_BACK_AT_TAG in tags else "by a later promotion"
        reason = (f"version {model_version.version} was champion before and was replaced ({how}); the flow never "
                  f"re-promotes it (art2mus promote {model_version.version} does)")
        return Verdict(tags.get(VALIDATION_TAG, "passed"), False, champion, [reason])
    status = tags.get(VALIDATION_TAG)
    if status in DECIDED and tags.get(DECISION_KEY_TAG) == decision_key(champion, params):
        reason = f"already decided against champion {champion or 'none'} with the same rule and evaluation: {status}"
        return Verdict(status, status == "passed" and not params.promotion.require_approval, champion, [reason])
    return None


def rejected(version: str, reasons: list[str], champion: str | None, params: Params, client) -> Verdict:
    """A failed verdict decided without scores (licences, same weights), recorded on the version."""
    record_validation(version, "failed", {}, reasons, client, champion=champion, key=decision_key(champion, params))
    return Verdict("failed", False, champion, reasons)


def decide_version(root: Path, version: str, params: Params, client, log: Logger) -> Verdict:
    """Challenger vs champion on the same items and draws (first run: floors only); the verdict
    becomes the version's `validation_status` and `decision.*` tags."""
    champion = champion_version(client)
    model_version = get_version(version, client)
    verdict = previous_verdict(model_version, champion, params)
    if verdict is not None:
        log.info("decide: version %s: %s", version, "; ".join(verdict.reasons))
        return verdict
    blocked = licence_blockers(model_version, params)
    if blocked:  # the policy forbids it whatever it scores: nothing to compute
        set_challenger(version, client)
        log.warning("decide: %s", blocked[0])
        return rejected(version, blocked, champion, params, client)
    metrics = list(params.promotion.metrics)
    weights = VersionTags.from_tags(model_version.tags).weights_sha256
    ours = challenger_scores(root, params, weights)
    if champion is not None and VersionTags.from_tags(get_version(champion, client).tags).weights_sha256 == weights:
        reasons = [f"the champion (version {champion}) has the same weights: nothing to gain"]
        log.info("decide: version %s: %s", version, reasons[0])
        return rejected(version, reasons, champion, params, client)
    if champion is None:
        log.info("decide: no champion yet: version %s is judged by the floors only", version)
        decision = decide({name: ours[name].to_numpy() for name in metrics}, None, params.promotion)
    else:
        log.info("decide: scoring champion version %s on the same %d items and draws", champion, len(ours))
        challenger, defender = paired(ours, champion_scores(root, params, champion), metrics)
        decision = decide(challenger, defender, params.promotion)
    status = ("awaiting_approval" if params.promotion.require_approval else "passed") if decision.promote else "failed"
    set_challenger(version, client)
    record_validation(version, status, decision.numbers, decision.reasons, client, champion=champion,
                      key=decision_key(champion, params))
    for reason in decision.reasons:
        log.info("decide: %s", reason)
    log.info("decide: version %s %s", version, {"passed": "wins", "failed": "is not promoted",
                                                "awaiting_approval": "wins and awaits approval"}[status])
    return Verdict(status, decision.promote and not params.promotion.require_approval, champion, decision.reasons,
                   decision.numbers)


def promote_version(root: Path, version: str, verdict: Verdict, by: str, params: Params | None, client,
                    log: Logger) -> str:
    """Smoke-test the version's pyfunc (load, generate once), then move `champion` to it in one call.

    With `params`, the licence policy is checked first (a verdict may predate it)."""
    if champion_version(client) == version:  # a retried attempt whose first try got through
        return version
    blocked = licence_blockers(get_version(version, client), params) if params is not None else []
    if blocked:
        record_validation(version, "failed", None, [*verdict.reasons, *blocked], client, champion=verdict.champion)
        raise LicenceBlocked(blocked[0])
    try:  # under the registry lock, the champion must still be the one `decide` compared against
        event = promote(version, by, reason=f"retrain: beat {verdict.champion or 'no champion (first run)'}",
                        metrics=verdict.numbers, client=client, expected_champion=verdict.champion, root=root)
    except ChampionChanged:
        raise  # the verdict is stale, not the version: its validation stays as decided
    except Art2MusError as error:
        record_validation(version, "failed", None, [*verdict.reasons, str(error)], client, champion=verdict.champion)
        raise
    if event is None:
        log.info("promote: version %s became the champion meanwhile; nothing recorded", version)
    else:
        log.info("promote: version %s is the champion (was %s)", version, event.previous or "none")
    return version
