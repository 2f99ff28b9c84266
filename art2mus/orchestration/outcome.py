"""What a retrain did: the outcome the CLI prints, the flow's MLflow run is tagged with and its summary shows."""

from __future__ import annotations

from dataclasses import dataclass, field

from art2mus.orchestration.dvc_runner import ReproReport
from art2mus.tracking.registry import RegisteredVersion
from art2mus.tracking.verdict import Verdict

MAX_TAG_CHARS = 5000  # of a message kept as an MLflow tag


@dataclass
class RetrainOutcome:
    """What a retrain did, for the CLI and the run's summary artifact."""

    version: str
    registered: bool  # False: the identity was already registered
    status: str
    promoted: bool
    champion: str | None  # after the run
    message: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    repro_seconds: float = 0.0

    def run_tags(self) -> dict[str, str]:
        """The outcome as tags of the flow's MLflow run."""
        return {"retrain.version": self.version, "retrain.status": self.status,
                "retrain.registered": str(self.registered).lower(), "retrain.promoted": str(self.promoted).lower(),
                "retrain.stages_ran": ",".join(self.ran), "retrain.message": self.message[:MAX_TAG_CHARS]}


def console_lines(outcome: RetrainOutcome, seconds: float) -> list[str]:
    """What a retrain run from the command line prints (`art2mus retrain` then names the champion)."""
    return [f"retrain: {outcome.message}",
            f"stages ran: {', '.join(outcome.ran) or 'none'}; skipped: {', '.join(outcome.skipped) or 'none'}",
            f"took {seconds:.1f} s (dvc repro {outcome.repro_seconds:.1f} s)"]


def summary_markdown(outcome: RetrainOutcome) -> str:
    """The retrain-summary artifact: the outcome's sentence, version, status, champion, stages and reasons."""
    lines = [f"# Retrain: {outcome.message}", "",
             f"- version: {outcome.version} ({'registered now' if outcome.registered else 'already registered'})",
             f"- validation status: {outcome.status}", f"- champion: {outcome.champion or 'none'}",
             f"- stages ran: {', '.join(outcome.ran) or 'none'}", f"- stages skipped: {', '.join(outcome.skipped) or 'none'}"]
    if outcome.reasons:
        lines += ["", "## Decision", "", *[f"- {reason}" for reason in outcome.reasons]]
    return "\n".join(lines)


def conclude(registered: RegisteredVersion, verdict: Verdict, promoted: bool, champion: str | None, report: ReproReport,
             require_approval: bool) -> RetrainOutcome:
    """The outcome, with one sentence a person can act on."""
    version = registered.version
    if verdict.status == "champion":
        message = (f"nothing changed: version {version} is already registered and is the champion"
                   if not registered.created else f"version {version} is the champion")
    elif promoted:
        message = f"version {version} is the new champion (was {verdict.champion or 'none'})"
    elif verdict.status == "awaiting_approval" and require_approval:
        won = f"beat champion {verdict.champion}" if verdict.champion else "passed the floors (no champion yet)"
        message = f"version {version} {won} and awaits approval: art2mus promote {version}"
    elif verdict.status == "failed":
        message = (f"version {version} is not promoted; champion stays {champion or 'none'}"
                   + ("" if registered.created else " (nothing new to register)"))
        if any(reason.startswith("licences:") for reason in verdict.reasons):
            message += "; its licences forbid promotion.intended_use (see the licences named above)"
    else:
        message = f"version {version}: {'; '.join(verdict.reasons)}; champion stays {champion or 'none'}"
    return RetrainOutcome(version, registered.created, verdict.status, promoted, champion, message, report.ran,
                          report.skipped, verdict.reasons, report.seconds)
