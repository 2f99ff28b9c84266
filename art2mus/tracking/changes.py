"""The change report of a retrain: what changed between the current champion and the candidate.

- params: every dotted key whose value differs between the two versions' `params` tags;
- data: every dvc.lock path whose md5 differs (the versions' `data_hashes` tags), file by file for
  DVC directories (their `.dir` manifests), item by item for the ingest manifests (artworks and
  tracks added, removed or changed by content hash), the quarantine (newly quarantined, released)
  and the training pairs (the train split). Earlier versions of a table are read from the DVC
  cache; when one is not there (another checkout made the champion), the report says so;
- metrics: the decision's paired numbers (both models on the same items and draws: the improvement
  and its one-sided lower confidence bound), and the evaluate stage's metrics with their intervals
  side by side (the champion's as recorded with its version).

Pure functions build the report from its inputs; `build_change_report` reads them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from art2mus.data.schema import ARTWORKS_MANIFEST, QUARANTINE_MANIFEST, SPLITS_TABLE, TRACKS_MANIFEST
from art2mus.errors import Art2MusError
from art2mus.tracking.registry import get_version
from art2mus.tracking.runs import flatten
from art2mus.workspace import DATA_HASHES_TAG, DECISION_CHAMPION_TAG, DECISION_REASONS_TAG, PARAMS_TAG, VALIDATION_TAG, json_tag

logger = logging.getLogger(__name__)

REPORT_FILE = "change_report.md"
REPORT_JSON = "change_report.json"
ARTIFACT_KEY = "change-report"  # the Prefect artifact's key
SHOWN = 10  # items listed per change before "... and N more"
EVALUATION_FILE = "evaluation/metrics.json"  # as art2mus.tracking.modelcard logs it
EVALUATED = ("retrieval_top1", "gap")
ITEM_LABELS = {"added": "added", "removed": "removed", "changed": "changed"}
QUARANTINE_LABELS = {"added": "newly quarantined", "removed": "released", "changed": "quarantined for another reason"}


@dataclass(frozen=True)
class ParamChange:
    key: str
    old: Any
    new: Any


@dataclass(frozen=True)
class HashChange:
    path: str
    old: str | None  # None: the path is new
    new: str | None  # None: the path is gone


@dataclass
class ItemChanges:
    """What changed inside one dataset: items added, removed, changed (ids), or why it cannot be told."""

    name: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unknown: str = ""  # why the items cannot be compared

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.unknown)


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    champion: dict[str, float] | None  # value, low, high
    challenger: dict[str, float] | None
    note: str = ""


@dataclass
class ChangeReport:
    candidate: str
    champion: str | None
    status: str  # the candidate's validation status
    params: list[ParamChange] = field(default_factory=list)
    data: list[HashChange] = field(default_factory=list)
    items: list[ItemChanges] = field(default_factory=list)
    paired: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> decision numbers
    evaluated: list[MetricDelta] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # the decision's
    headline: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def params_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ParamChange]:
    """Dotted keys whose values differ (a key on one side only is a change to or from None)."""
    before, after = flatten(old), flatten(new)
    return [ParamChange(key, before.get(key), after.get(key)) for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)]


def without_outputs_of(hashes: Mapping[str, str], folder: str) -> dict[str, str]:
    """The data hashes minus what a stage wrote under `folder` (the evaluation: results, not data)."""
    prefix = folder.rstrip("/") + "/"
    return {path: md5 for path, md5 in hashes.items() if path != folder.rstrip("/") and not path.startswith(prefix)}


def hash_diff(old: Mapping[str, str], new: Mapping[str, str]) -> list[HashChange]:
    return [HashChange(path, old.get(path), new.get(path)) for path in sorted(set(old) | set(new))
            if old.get(path) != new.get(path)]


def keyed_diff(name: str, old: pd.DataFrame, new: pd.DataFrame, key: str, content: str | None) -> ItemChanges:
    """Rows added and removed by `key`, and rows whose `content` column differs."""
    before, after = old.set_index(key), new.set_index(key)
    changes = ItemChanges(name, added=sorted(map(str, after.index.difference(before.index))),
                          removed=sorted(map(str, before.index.difference(after.index))))
    if content is not None:
        common = before.index.intersection(after.index)
        differs = before.loc[common, content].astype(str) != after.loc[common, content].astype(str)
        changes.changed = sorted(map(str, common[differs.to_numpy()]))
    return changes


def manifest_frame(entries: list[dict[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(entries, columns=["relpath", "md5"]).drop_duplicates("relpath")


def manifest_diff(name: str, old: list[dict[str, str]], new: list[dict[str, str]]) -> ItemChanges:
    """Files of a DVC directory (its `.dir` manifest: relpath and md5 per file)."""
    return keyed_diff(name, manifest_frame(old), manifest_frame(new), "relpath", "md5")


def quarantined_items(table: pd.DataFrame) -> pd.DataFrame:
    """The quarantine table keyed by `source:path` (the same input, whatever its reason)."""
    return table.assign(item=table["source"].astype(str) + ":" + table["path"].astype(str)).drop_duplicates("item")


def quarantine_diff(old: pd.DataFrame, new: pd.DataFrame) -> ItemChanges:
    """Newly quarantined inputs (added), released ones (removed), ones quarantined for another reason (changed)."""
    return keyed_diff("quarantine", quarantined_items(old), quarantined_items(new), "item", "reason")


def training_pairs_diff(old: pd.DataFrame, new: pd.DataFrame) -> ItemChanges:
    """Pairs of the train split added and removed."""
    def train_pairs(splits: pd.DataFrame) -> pd.DataFrame:
        train = splits[splits["split"] == "train"]
        return pd.DataFrame({"pair": train["artwork_id"].astype(str) + " ~ " + train["track_id"].astype(str)})

    return keyed_diff("training pairs", train_pairs(old), train_pairs(new), "pair", None)


def paired_numbers(tags: Mapping[str, str], metrics: list[str]) -> dict[str, dict[str, float]]:
    """The decision's per-metric numbers from the candidate's `decision.*` tags."""
    found: dict[str, dict[str, float]] = {}
    for metric in metrics:
        prefix = f"decision.{metric}."
        numbers = {key.removeprefix(prefix): float(value) for key, value in tags.items() if key.startswith(prefix)}
        if numbers:
            found[metric] = numbers
    return found


def evaluated_deltas(champion: dict[str, Any] | None, challenger: dict[str, Any] | None) -> list[MetricDelta]:
    """The trained model's evaluate metrics (value and interval) of both versions."""
    if challenger is None:
        return []
    def cell(metrics: dict[str, Any] | None, metric: str) -> dict[str, float] | None:
        if metrics is None:
            return None
        found = metrics.get("correspondence", {}).get("trained", {}).get(metric)
        return {key: found[key] for key in ("value", "low", "high") if key in found} if found else None

    note = ""
    if champion is None:
        note = "the champion's evaluation is not recorded with its version"
    elif (champion.get("split"), champion.get("items")) != (challenger.get("split"), challenger.get("items")):
        note = (f"evaluated on different items: champion {champion.get('items')} {champion.get('split')}, "
                f"challenger {challenger.get('items')} {challenger.get('split')} (the paired numbers are comparable)")
    return [MetricDelta(metric, cell(champion, metric), cell(challenger, metric), note) for metric in EVALUATED]


TableReader = Callable[[str, str], pd.DataFrame | list | None]


def item_changes(old_hashes: Mapping[str, str], new_hashes: Mapping[str, str], tables: Mapping[str, str],
                 read: TableReader) -> list[ItemChanges]:
    """Item-level changes of every changed path: `.dir` manifests, the ingest manifests, quarantine, splits.

    `tables` maps a dvc.lock path to its kind (artworks, tracks, quarantine, splits); `read(path, md5)`
    returns that version of the table (or a `.dir` manifest's entries), None when it is not available.
    """
    found = []
    for change in hash_diff(old_hashes, new_hashes):
        if change.old is None or change.new is None:
            continue
        kind = "directory" if change.new.endswith(".dir") and change.old.endswith(".dir") else tables.get(change.path)
        if kind is None:
            continue
        name = change.path if kind == "directory" else f"{kind} ({change.path})"
        old, new = read(change.path, change.old), read(change.path, change.new)
        if old is None or new is None:
            missing = change.old if old is None else change.new
            found.append(ItemChanges(name, unknown=f"{change.path} at md5 {missing} is not in the DVC cache "
                                                   "(dvc pull it to compare item by item)"))
        elif kind == "directory":
            found.append(manifest_diff(name, old, new))
        elif kind == "quarantine":
            found.append(quarantine_diff(old, new))
        elif kind == "splits":
            found.append(training_pairs_diff(old, new))
        else:
            found.append(keyed_diff(name, old, new, "artwork_id" if kind == "artworks" else "track_id", "sha256"))
    return [changes for changes in found if not changes.empty]


def compare_versions(candidate: str, candidate_tags: Mapping[str, str], champion: str | None,
                     champion_tags: Mapping[str, str] | None, metrics: list[str], read: TableReader,
                     tables: Mapping[str, str], challenger_metrics: dict[str, Any] | None = None,
                     champion_metrics: dict[str, Any] | None = None) -> ChangeReport:
    """The report, from both versions' tags, a reader of old tables and both evaluations."""
    status = candidate_tags.get(VALIDATION_TAG, "pending")
    reasons = json_tag(candidate_tags, DECISION_REASONS_TAG, [])
    report = ChangeReport(candidate, champion, status, reasons=reasons)
    if champion is None or champion_tags is None:
        report.headline = f"no champion: version {candidate} is compared with nothing (first run)"
        return report
    if champion == candidate:
        report.headline = f"version {candidate} is the champion: nothing changed since it"
        return report
    report.params = params_diff(json_tag(champion_tags, PARAMS_TAG), json_tag(candidate_tags, PARAMS_TAG))
    evaluation = json_tag(candidate_tags, PARAMS_TAG).get("evaluate", {}).get("out_dir", "reports/evaluate")
    old_data = without_outputs_of(json_tag(champion_tags, DATA_HASHES_TAG), evaluation)
    new_data = without_outputs_of(json_tag(candidate_tags, DATA_HASHES_TAG), evaluation)
    report.data = hash_diff(old_data, new_data)
    report.items = item_changes(old_data, new_data, tables, read)
    if candidate_tags.get(DECISION_CHAMPION_TAG) == champion:
        report.paired = paired_numbers(candidate_tags, metrics)
    report.evaluated = evaluated_deltas(champion_metrics, challenger_metrics)
    report.headline = (f"version {candidate} against champion {champion}: {len(report.params)} param(s) and "
                       f"{len(report.data)} data path(s) changed; {status}")
    return report


def shown(ids: list[str]) -> str:
    more = f" ... and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
    return ", ".join(f"`{item}`" for item in ids[:SHOWN]) + more


def fmt(value: Any) -> str:
    return "(none)" if value is None else f"`{json.dumps(value)}`"


def fmt_interval(cell: dict[str, float] | None) -> str:
    if not cell:
        return "n/a"
    if "low" in cell and "high" in cell:
        return f"{cell['value']:.4g} [{cell['low']:.4g}, {cell['high']:.4g}]"
    return f"{cell['value']:.4g}"


def report_markdown(report: ChangeReport, confidence: float = 0.95) -> str:
    """The report for people (the Prefect and MLflow artifacts)."""
    lines = [f"# Change report: version {report.candidate}", "", report.headline, ""]
    if report.champion is None or report.champion == report.candidate:
        if report.reasons:
            lines += ["## Decision", "", *[f"- {reason}" for reason in report.reasons]]
        return "\n".join(lines).rstrip() + "\n"
    lines += ["## Params", ""]
    lines += ([f"- `{change.key}`: {fmt(change.old)} -> {fmt(change.new)}" for change in report.params]
              or ["- no change"])
    lines += ["", "## Data", ""]
    lines += ([f"- `{change.path}`: {change.old or '(absent)'} -> {change.new or '(absent)'}" for change in report.data]
              or ["- no change (same dvc.lock hashes)"])
    for changes in report.items:
        lines += ["", f"### {changes.name}", ""]
        if changes.unknown:
            lines.append(f"- not compared: {changes.unknown}")
            continue
        labels = QUARANTINE_LABELS if changes.name == "quarantine" else ITEM_LABELS
        for attribute, label in labels.items():
            ids = getattr(changes, attribute)
            if ids:
                lines.append(f"- {label}: {len(ids)}: {shown(ids)}")
    lines += ["", "## Metrics", ""]
    if report.paired:
        lines += [f"Paired on the same items and draws (challenger - champion, {confidence:.0%} one-sided lower bound):",
                  "", "| metric | champion | challenger | improvement | lower bound | required |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for metric, numbers in report.paired.items():
            cells = [numbers.get(key) for key in ("champion", "challenger", "improvement", "lower_bound",
                                                  "min_improvement")]
            lines.append(f"| {metric} | " + " | ".join("n/a" if value is None else f"{value:+.4g}" if index >= 2
                                                        else f"{value:.4g}" for index, value in enumerate(cells)) + " |")
    else:
        lines.append("- no paired comparison recorded against this champion (see the decision below)")
    if report.evaluated:
        note = report.evaluated[0].note
        lines += ["", "Evaluate stage, trained model (95% bootstrap intervals):", "",
                  "| metric | champion | challenger |", "| --- | --- | --- |"]
        lines += [f"| {delta.metric} | {fmt_interval(delta.champion)} | {fmt_interval(delta.challenger)} |"
                  for delta in report.evaluated]
        if note:
            lines += ["", f"Note: {note}."]
    if report.reasons:
        lines += ["", "## Decision", "", f"- status: {report.status}", *[f"- {reason}" for reason in report.reasons]]
    return "\n".join(lines).rstrip() + "\n"


def dvc_table_reader(root: Path) -> TableReader:
    """Read a table (or a `.dir` manifest) at a given md5 from the project's DVC cache."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            cache = repo.cache.local
    except DvcException as error:
        raise Art2MusError(f"change report: {root} is not a DVC project it can read: {error}") from None

    def read(path: str, md5: str) -> pd.DataFrame | list | None:
        cached = Path(cache.oid_to_path(md5))
        if not cached.is_file():
            return None
        if md5.endswith(".dir"):
            try:
                return json.loads(cached.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise Art2MusError(f"{cached}: not a DVC directory manifest: {error}") from None
        return pd.read_parquet(cached)

    return read


def table_kinds(params: Mapping[str, Any]) -> dict[str, str]:
    """dvc.lock paths of the tables the report compares item by item, from a version's params."""
    out = params.get("ingest", {}).get("out_dir", "data/interim")
    return {f"{out}/{ARTWORKS_MANIFEST}": "artworks", f"{out}/{TRACKS_MANIFEST}": "tracks",
            f"{out}/{QUARANTINE_MANIFEST}": "quarantine", SPLITS_TABLE: "splits"}


def recorded_evaluation(client, run_id: str) -> dict[str, Any] | None:
    """The evaluation logged with a version's run (modelcard.EVALUATION_FILE), None when there is none."""
    from mlflow.exceptions import MlflowException  # mlflow: only when reading a run's artifacts

    names = {item.path for item in client.list_artifacts(run_id, "evaluation")}
    if EVALUATION_FILE not in names:
        return None
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, EVALUATION_FILE, folder)
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (MlflowException, OSError, json.JSONDecodeError) as error:
            logger.warning("change report: cannot read %s of run %s: %s", EVALUATION_FILE, run_id, error)
            return None


def build_change_report(root: Path, candidate: str, champion: str | None, metrics: list[str], client) -> ChangeReport:
    """Read both versions from the registry and the old tables from the DVC cache; compare."""
    candidate_version = get_version(candidate, client)
    tags = dict(candidate_version.tags)
    if champion is None or champion == candidate:
        return compare_versions(candidate, tags, champion, {} if champion else None, metrics, lambda *_: None, {})
    champion_version = get_version(champion, client)
    params = json_tag(tags, PARAMS_TAG)
    return compare_versions(candidate, tags, champion, dict(champion_version.tags), metrics, dvc_table_reader(root),
                            table_kinds(params), recorded_evaluation(client, candidate_version.run_id),
                            recorded_evaluation(client, champion_version.run_id))
