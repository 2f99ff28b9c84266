"""Model cards: one Markdown card per registered version of `art2mus`.

A card says what the model is, what it was trained on and under which licences, with which
params, how it scored against its baselines (with confidence intervals), what it is for, what it
cannot do, and where it came from (commit, data hashes, quality gates). The retrain flow writes
it when it registers a version: `model_card.md` (and `licences.json`, `evaluation/metrics.json`)
as artifacts of the version's run, the licence summary as the version's `licences` tag, and the
card's artifact path as its `model_card` tag, so a re-run with nothing changed writes no second card.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from art2mus.config import Params
from art2mus.data.schema import GATES, REPORTS_DIR, SPLITS_TABLE
from art2mus.io import read_json, read_table
from art2mus.tracking.licences import (
    LICENCES_FILE,
    LicenceSummary,
    commercial_blockers,
    is_embedded_sample,
    summarise_licences,
)
from art2mus.tracking.registry import MODEL_NAME, get_version
from art2mus.workspace import CARD_TAG, LICENCES_TAG, VersionTags

logger = logging.getLogger(__name__)

CARD_FILE = "model_card.md"
EVALUATION_FILE = "evaluation/metrics.json"  # the evaluate stage's metrics, kept with the version
# art2mus.evaluation.evaluate.METRICS_FILE, not imported from there: that pulls in torch and diffusers.
METRICS_FILE = "metrics.json"
CONDITIONINGS = {  # evaluate's conditioning sources, as the card names them
    "trained": "this model (trained aligner)",
    "untrained": "untrained aligners (same architecture, random weights)",
    "mean": "mean conditioning (one token set for every image)",
    "oracle": "oracle (the prior's own audio encoder: the ceiling)",
}
TRAIN_KEYS = ("tokens", "hidden_dim", "depth", "steps", "batch_size", "grad_accum", "lr", "weight_decay", "grad_clip",
              "warmup_steps", "schedule", "min_snr_gamma", "seed")


@dataclass
class CardInputs:
    """Everything a card is written from (read from the registry and the project by `card_inputs`)."""

    version: str
    tags: dict[str, str]  # the version's tags (identity, lineage, params as JSON)
    run_id: str  # the version's (register) run
    licences: LicenceSummary
    intended_use: str
    metrics: dict[str, Any] | None = None  # reports/evaluate/metrics.json when it evaluates these weights
    metrics_note: str = ""  # why there are no metrics
    gates: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    training: dict[str, int] = field(default_factory=dict)  # counts of the train split
    sample: bool = False  # the data is the embedded sample


def interval(cell: dict[str, Any] | None, spec: str = ".3f") -> str:
    """`value [low, high]` in the format `spec`, or what is known."""
    if not cell or cell.get("value") is None:
        return "n/a"
    if cell.get("low") is None or cell.get("high") is None:
        return f"{cell['value']:{spec}}"
    return f"{cell['value']:{spec}} [{cell['low']:{spec}}, {cell['high']:{spec}}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    escape = [[str(cell).replace("|", "\\|").replace("\n", " ") for cell in row] for row in [header, *rows]]
    return ([f"| {' | '.join(escape[0])} |", f"| {' | '.join('---' for _ in header)} |"]
            + [f"| {' | '.join(row)} |" for row in escape[1:]])


def model_section(inputs: CardInputs) -> list[str]:
    tags = VersionTags.from_tags(inputs.tags)
    backbone = tags.params.get("backbone", {})
    profile = backbone.get("profile", "?")
    prior = ("tiny AudioLDM2 built in code, trained by the prior stage" if profile == "tiny"
             else f"{backbone.get('source')}@{backbone.get('revision')}")
    return ["## Model", "",
            "An image aligner (MLP with Tanh) that turns a frozen image encoder's embedding into K tokens for "
            "AudioLDM2's GPT-2, which writes the language of audio that conditions the frozen UNet: a painting in, "
            "music out. Only the aligner was trained.", "",
            f"- version: {inputs.version} (run `{inputs.run_id}`, train run `{tags.train_run_id}`)",
            f"- identity: `{tags.identity}`",
            f"- aligner weights sha256: `{tags.weights_sha256}`",
            f"- image encoder: `{tags.image_encoder_id}`",
            f"- backbone: {profile} ({prior}); prior `{tags.prior[:16]}`",
            f"- load: `models:/{MODEL_NAME}/{inputs.version}` (pyfunc: image in, WAV out)", ""]


def intended_use_section(inputs: CardInputs) -> list[str]:
    blockers = commercial_blockers(inputs.licences)
    lines = ["## Intended use", "",
             f"- Policy (params.yaml `promotion.intended_use`): **{inputs.intended_use}**.",
             "- Intended: research on conditioning music generation on images (ArtToMus), and generating "
             "short music clips for artworks for study and demonstration.",
             "- Out of scope: passing generated music off as human-made or as the training artists' work; any use "
             "the training data's licences forbid."]
    if blockers:
        lines.append(f"- Commercial use: **not allowed**: {len(blockers)} licence(s) of the training data or the "
                     "parts forbid it or cannot be cleared:")
        lines += [f"  - {line}" for line in blockers]
    else:
        lines.append("- Commercial use: allowed by every licence recorded for the training data and the parts "
                     "(check attribution and share-alike terms).")
    return [*lines, ""]


def licence_rows(rows) -> list[list[str]]:
    return [[row.licence.name or "(none)", row.licence.use, str(row.count), row.licence.why] for row in rows]


def data_section(inputs: CardInputs) -> list[str]:
    params = VersionTags.from_tags(inputs.tags).params
    ingest = params.get("ingest", {})
    source = ("the embedded sample (synthetic paintings and music with a planted correspondence)" if inputs.sample
              else f"ArtGraph `{ingest.get('artgraph_dir', '?')}`, FMA `{ingest.get('fma_dir', '?')}`")
    counts = inputs.training
    lines = ["## Training data", "",
             f"- Source: {source}; pairs: `{params.get('pair', {}).get('method', '?')}`.",
             f"- Train split: {counts.get('pairs', 0)} (artwork, track) pairs, {counts.get('artworks', 0)} artworks, "
             f"{counts.get('tracks', 0)} tracks, {counts.get('artists', 0)} artists (splits grouped by artist: no "
             "test artist was seen in training).", "",
             "### Track licences (FMA `license`, train split)", "",
             *table(["licence", "use", "tracks", "why"], licence_rows(inputs.licences.tracks)), "",
             "### Artwork licences", "",
             *table(["licence", "use", "artworks", "why"], licence_rows(inputs.licences.artworks)), ""]
    lines += [f"- Note: {note}" for note in inputs.licences.notes]
    lines += ["", "### Parts", "",
              *table(["part", "component", "code", "weights", "note"],
                     [[part.part, part.component, f"{part.code.name or '(unknown)'} ({part.code.use})",
                       f"{part.weights.name or '(unknown)'} ({part.weights.use})", part.note or part.weights.why]
                      for part in inputs.licences.parts]), ""]
    return lines


def params_section(inputs: CardInputs) -> list[str]:
    params = VersionTags.from_tags(inputs.tags).params
    train = params.get("train", {})
    rows = [[f"train.{key}", json.dumps(train[key])] for key in TRAIN_KEYS if key in train]
    encoder = params.get("features", {}).get("image_encoder")
    if encoder is not None:
        rows.append(["features.image_encoder", json.dumps(encoder, sort_keys=True)])
    backbone = params.get("backbone", {})
    shown = ("profile", "max_new_tokens") if backbone.get("profile") == "tiny" else ("profile", "source", "revision",
                                                                                   "max_new_tokens")
    rows += [[f"backbone.{key}", json.dumps(backbone[key])] for key in shown if key in backbone]
    prior = params.get("prior", {})
    if backbone.get("profile") == "tiny":
        rows += [[f"prior.{key}", json.dumps(prior[key])] for key in ("steps", "lr", "cond_dropout") if key in prior]
    return ["## Training parameters", "", *table(["param", "value"], rows), "",
            "The full params are the version's `params` tag.", ""]


def metrics_section(inputs: CardInputs) -> list[str]:
    metrics = inputs.metrics
    lines = ["## Evaluation", ""]
    if metrics is None:
        return [*lines, f"No evaluation of these weights: {inputs.metrics_note}", ""]
    correspondence, generation = metrics.get("correspondence", {}), metrics.get("generation", {})
    fad_name = next((key for found in generation.values() for key in found if key.startswith("fad_")), None)
    trained = correspondence.get("trained", {})
    lines += [f"On the {metrics.get('items')} pairs of the {metrics.get('split')} split: retrieval of the paired "
              f"artwork among k={metrics.get('k')} candidates by the prior's denoising error "
              f"({metrics.get('draws')} noise/timestep draws each; chance top-1 {trained.get('chance_top1', 0):.3f}), "
              "the matched-vs-mismatched error gap, and generated-set scores. Values with 95% bootstrap "
              "confidence intervals.", ""]
    header = ["conditioning", "retrieval top-1", "gap"]
    if fad_name:
        header.append(fad_name.replace("_", " "))
    header.append("ImageBindScore MM")
    rows = []
    for name, label in CONDITIONINGS.items():
        if name not in correspondence:
            continue
        found, generated = correspondence[name], generation.get(name, {})
        row = [label, interval(found.get("retrieval_top1")), interval(found.get("gap"), ".3g")]
        if fad_name:
            row.append(interval(generated.get(fad_name), ".2f") if generated else "n/a (no generation)")
        row.append(interval(generated.get("imagebind_score", {}).get("mm")) if generated else "n/a (no generation)")
        rows.append(row)
    lines += [*table(header, rows), ""]
    planted = generation.get("trained", {}).get("planted")
    if planted:
        lines += ["Planted factors read back from the generated music by an independent estimator (sample only):",
                  "", *table(["factor", "accuracy", "chance"],
                             [[factor, interval(score.get("accuracy")), f"{score.get('chance', 0):.3f}"]
                              for factor, score in planted.items()]), ""]
    return lines


def limitations_section(inputs: CardInputs) -> list[str]:
    params = VersionTags.from_tags(inputs.tags).params
    backbone = params.get("backbone", {})
    lines = ["## Limitations", "",
             "- Image-to-music alignment stays below text-conditioned systems (the ArtToMus paper's finding): the "
             "image reaches the music only through K aligner tokens into a frozen GPT-2 and UNet.",
             "- The paired data decides what \"fitting music\" means: pairs come from a pairs file or from "
             "embedding similarity, not from human judgement."]
    if backbone.get("profile") == "tiny":
        tiny = backbone.get("tiny", {})
        lines += [
            "- This is the tiny CPU profile, **not the paper's model**: the prior is an AudioLDM2 built from small "
            f"configs in code (UNet channels {tiny.get('unet_channels')}, GPT-2 width {tiny.get('lm_width')}) and "
            "trained by the prior stage on the train split's music only.",
            "- Tiny profile audio: the codec is a fixed DCT fold of the mel spectrogram (not a VAE), the vocoder is "
            "Griffin-Lim with no learned weights (far below HiFi-GAN), the T5 stream is a constant zero embedding, "
            f"and clips are {params.get('audio', {}).get('crop_seconds', '?')} s.",
        ]
    if params.get("features", {}).get("image_encoder", {}).get("name") == "tiny":
        lines.append("- The tiny image encoder has seeded random weights: it carries the sample's planted visual "
                     "factors, not the meaning of real paintings.")
    if inputs.sample:
        lines.append("- Trained and evaluated on the embedded synthetic sample: the numbers above measure whether "
                     "the pipeline learns the planted correspondence, nothing about real paintings or music.")
    if inputs.metrics is not None:
        lines.append(f"- {inputs.metrics.get('items')} evaluation items: the intervals describe this test split, "
                     "not paintings and music in general.")
    return [*lines, ""]


def gate_line(gate: str, report: dict[str, Any] | None) -> str:
    if report is None:
        return f"{gate}: no report"
    statistics = report.get("statistics", {})
    verdict = "passed" if report.get("success") else "FAILED"
    return (f"{gate}: {verdict} ({statistics.get('successful_expectations', '?')} of "
            f"{statistics.get('evaluated_expectations', '?')} expectations)")


def lineage_section(inputs: CardInputs) -> list[str]:
    tags = VersionTags.from_tags(inputs.tags)
    training_data = tags.training_data_hashes or tags.data_hashes
    return ["## Lineage", "",
            f"- commit: `{tags.git_commit or 'unknown'}`{' (work tree dirty)' if tags.git_dirty else ''}; "
            f"code version `{tags.code_version}`",
            *[f"- gate {gate_line(gate, report)}" for gate, report in inputs.gates.items()],
            "- data the train stage read (dvc.lock md5):", "",
            *table(["path", "md5"], [[path, f"`{md5}`"] for path, md5 in sorted(training_data.items())]), "",
            "Every data hash of the pipeline is the version's `data_hashes` tag.", ""]


def model_card_markdown(inputs: CardInputs) -> str:
    """The card, from its inputs alone."""
    lines = [f"# Model card: {MODEL_NAME} version {inputs.version}", ""]
    for section in (model_section, intended_use_section, data_section, params_section, metrics_section,
                    limitations_section, lineage_section):
        lines += section(inputs)
    return "\n".join(lines).rstrip() + "\n"


def training_counts(root: Path) -> dict[str, int]:
    train = read_table(root / SPLITS_TABLE).query("split == 'train'")
    return {"pairs": len(train), "artworks": train["artwork_id"].nunique(), "tracks": train["track_id"].nunique(),
            "artists": train["artist"].nunique()}


def evaluation_for(root: Path, params: Params, weights: str) -> tuple[dict[str, Any] | None, str]:
    """The evaluate stage's metrics when they are of these weights, else (None, why not)."""
    path = root / params.evaluate.out_dir / METRICS_FILE
    if not path.is_file():
        return None, f"{path} is missing (the evaluate stage writes it)"
    metrics = read_json(path)
    evaluated = metrics.get("model", {}).get("weights_sha256")
    if evaluated != weights:
        return None, f"{path} evaluates weights {str(evaluated)[:12]}, not {weights[:12]}"
    return metrics, ""


def gate_reports(root: Path) -> dict[str, dict[str, Any] | None]:
    reports = {}
    for gate in GATES:
        path = root / REPORTS_DIR / f"{gate}.json"
        reports[gate] = read_json(path) if path.is_file() else None
    return reports


def card_inputs(root: Path, params: Params, model_version) -> CardInputs:
    """Read a card's inputs: the version from the registry, the data, metrics and gates from the project."""
    tags = dict(model_version.tags)
    metrics, note = evaluation_for(root, params, VersionTags.from_tags(tags).weights_sha256)
    return CardInputs(version=str(model_version.version), tags=tags, run_id=model_version.run_id,
                      licences=summarise_licences(params, root), intended_use=params.promotion.intended_use,
                      metrics=metrics, metrics_note=note, gates=gate_reports(root), training=training_counts(root),
                      sample=is_embedded_sample(params, root))


def run_in_store(run_id: str, client) -> bool:
    """Whether this tracking store has the run (a model trained elsewhere, e.g. before a team moved to a
    shared server, is registered with a train run id the store has never seen)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        logger.warning("model card: the train run %s is not in this tracking store; its licences go on the "
                       "version's run only", run_id)
        return False
    return True


def document_version(root: Path, version: str, params: Params, client) -> bool:
    """Write the version's card, licences and evaluation unless it has them; True when written now."""
    model_version = get_version(version, client)
    if model_version.tags.get(CARD_TAG):
        logger.debug("model card: version %s already has %s", version, model_version.tags[CARD_TAG])
        return False
    inputs = card_inputs(root, params, model_version)
    licences = inputs.licences.to_dict()
    runs = [model_version.run_id]
    train_run = VersionTags.from_tags(inputs.tags).train_run_id
    if train_run and train_run not in runs and run_in_store(train_run, client):
        runs.append(train_run)
    for run_id in runs:  # the version's run, and the train run it came from
        client.log_dict(run_id, licences, LICENCES_FILE)
    if inputs.metrics is not None:
        client.log_dict(model_version.run_id, inputs.metrics, EVALUATION_FILE)
    client.log_text(model_version.run_id, model_card_markdown(inputs), CARD_FILE)
    client.set_model_version_tag(MODEL_NAME, version, LICENCES_TAG, json.dumps(licences, sort_keys=True))
    client.set_model_version_tag(MODEL_NAME, version, CARD_TAG, CARD_FILE)  # last: the card is complete
    logger.debug("model card: wrote %s for version %s (run %s)", CARD_FILE, version, model_version.run_id)
    return True
