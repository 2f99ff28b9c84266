"""Licences of what a model is made of (its training data and its frozen parts) and the promotion policy.

- Training data: the `license` of every track in the train split (FMA's per-track licence travels
  from tracks.csv to the splits), and the artworks' licence when the ArtGraph export has a licence
  column. The embedded sample's artworks are painted by art2mus itself; its tracks are synthesised
  too, but carry FMA licence strings drawn at random (sample.py), so the policy is exercised.
- Parts: the image encoder and the backbone (the prior), from a table in code (`PART_LICENCES`):
  what the upstream project states for its code and its weights.
- Every licence is classified `commercial` (permits commercial use), `noncommercial` (a CC NC
  clause or a non-commercial licence) or `unknown` (no licence, or one art2mus does not recognise:
  its terms cannot be cleared, so it is not commercial-OK).
- Policy (`promotion.intended_use`): `research` allows every classification (non-commercial
  licences permit research; unknown ones are reported); `commercial` blocks non-commercial and
  unknown licences, naming them and how many tracks or artworks carry each.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from art2mus.config import Params
from art2mus.data.schema import ARTWORKS_MANIFEST, SPLITS_TABLE
from art2mus.errors import Art2MusError
from art2mus.io import read_table
from art2mus.workspace import LICENCES_TAG

COMMERCIAL = "commercial"
NONCOMMERCIAL = "noncommercial"
UNKNOWN = "unknown"
LICENCES_FILE = "licences.json"  # MLflow artifact on the version's run and its train run
PROJECT_LICENCE = "Apache-2.0"  # art2mus's own code (pyproject.toml)
ART2MUS_WEIGHTS = "art2mus (built in code from a seed, or trained by art2mus)"
SAMPLE_ARTWORKS = "art2mus sample (procedurally painted by art2mus)"
LICENCE_COLUMNS = ("license", "licence", "rights")  # an ArtGraph export's licence column, if any

NONCOMMERCIAL_PATTERN = re.compile(r"non[\s-]?commercial|(?:^|[\s_-])nc(?:[\s_-]|$)", re.IGNORECASE)
NO_DERIVATIVES_PATTERN = re.compile(r"no[\s-]?deriv|(?:^|[\s_-])nd(?:[\s_-]|$)", re.IGNORECASE)
# Licences that permit commercial use, as FMA, Hugging Face and SPDX spell them (lower case).
COMMERCIAL_PATTERNS = (
    (re.compile(r"\bcc0\b|public domain"), "public domain dedication"),
    (re.compile(r"^(?:creative commons )?attribution\b|\bcc[\s-]by\b"), "Creative Commons attribution licence"),
    (re.compile(r"free art licen[cs]e"), "Free Art License (copyleft, commercial use allowed)"),
    (re.compile(r"^(?:mit|apache[\s-]2\.0|bsd[\s-]\d-clause)\b"), "permissive open-source licence"),
    (re.compile(r"^art2mus\b"), "made by art2mus"),
)


@dataclass(frozen=True)
class Licence:
    """One licence as its source states it, and what it allows."""

    name: str
    use: str  # COMMERCIAL | NONCOMMERCIAL | UNKNOWN
    why: str


@dataclass(frozen=True)
class LicenceCount:
    licence: Licence
    count: int


@dataclass(frozen=True)
class PartLicence:
    """A frozen part of the model: what it is and the licences of its code and its weights."""

    part: str  # "image encoder" | "backbone"
    component: str  # e.g. "imagebind:imagebind_huge", "audioldm2:cvssp/audioldm2-music"
    code: Licence
    weights: Licence
    note: str = ""


@dataclass
class LicenceSummary:
    """The licences of one model: its training data (counted per item) and its parts."""

    tracks: list[LicenceCount] = field(default_factory=list)
    artworks: list[LicenceCount] = field(default_factory=list)
    parts: list[PartLicence] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "commercial_use": not commercial_blockers(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LicenceSummary:
        def counts(rows: list[dict]) -> list[LicenceCount]:
            return [LicenceCount(Licence(**row["licence"]), int(row["count"])) for row in rows]

        parts = [PartLicence(part=row["part"], component=row["component"], code=Licence(**row["code"]),
                             weights=Licence(**row["weights"]), note=row.get("note", "")) for row in data["parts"]]
        return cls(counts(data["tracks"]), counts(data["artworks"]), parts, list(data.get("notes", [])))


class LicenceBlocked(Art2MusError):
    """The model's data or parts forbid the intended use."""


def classify_licence(name: str | None) -> Licence:
    """What a licence string allows: non-commercial clauses first, then known permissive licences."""
    text = " ".join(str(name or "").split())
    if not text or text.lower() in ("nan", "none", "null"):
        return Licence(text, UNKNOWN, "no licence recorded: its terms cannot be cleared")
    lowered = text.lower()
    if NONCOMMERCIAL_PATTERN.search(lowered):
        return Licence(text, NONCOMMERCIAL, "non-commercial clause (NC): research and other non-commercial use only")
    for pattern, kind in COMMERCIAL_PATTERNS:
        if pattern.search(lowered):
            why = kind
            if NO_DERIVATIVES_PATTERN.search(lowered):
                why += "; no-derivatives (ND): whether a trained model is a derivative is unsettled, review"
            return Licence(text, COMMERCIAL, why)
    return Licence(text, UNKNOWN, "not a licence art2mus recognises: its terms cannot be cleared")


def count_licences(values: list[str | None]) -> list[LicenceCount]:
    """One row per distinct licence with how many items carry it, most common first."""
    counts = Counter(" ".join(str(value or "").split()) for value in values)
    return [LicenceCount(classify_licence(name), count)
            for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def art2mus_part(part: str, component: str, note: str = "") -> PartLicence:
    return PartLicence(part, component, Licence(PROJECT_LICENCE, COMMERCIAL, "art2mus's own code"),
                       Licence(ART2MUS_WEIGHTS, COMMERCIAL, "made by art2mus"), note)


# What upstream states for the parts art2mus can load: (kind, source) -> (code, weights, where it is stated).
# Checked against: cvssp/audioldm2-music's Hugging Face model card (`license: cc-by-nc-sa-4.0` since
# April 2024, cc-by-nc-nd-4.0 before); ImageBind's README ("code and model weights ... CC-BY-NC 4.0")
# and the LICENSE file the imagebind package ships (CC BY-NC-SA 4.0); openai/CLIP's LICENSE (MIT;
# its model card puts deployed use out of scope); laion/clap-htsat-unfused's model card (Apache-2.0).
PART_LICENCES: dict[tuple[str, str], tuple[str, str, str]] = {
    ("audioldm2", "cvssp/audioldm2-music"): (
        "Apache-2.0 (diffusers' AudioLDM2Pipeline)", "CC BY-NC-SA 4.0",
        "Hugging Face model card of cvssp/audioldm2-music (GPT-2, T5, UNet, VAE and HiFi-GAN weights)"),
    ("imagebind", ""): ("CC BY-NC-SA 4.0", "CC BY-NC 4.0",
                        "ImageBind's README and the LICENSE of the imagebind package"),
    ("clip", "openai/clip-vit-large-patch14"): ("MIT", "MIT",
                                                "openai/CLIP's LICENSE; the model card puts deployed use out of scope"),
    ("clap", "laion/clap-htsat-unfused"): ("Apache-2.0", "Apache-2.0", "the model card of laion/clap-htsat-unfused"),
}
DEFAULT_SOURCES = {"clip": "openai/clip-vit-large-patch14", "clap": "laion/clap-htsat-unfused", "imagebind": ""}


def upstream_part(part: str, kind: str, source: str) -> PartLicence:
    """A part loaded from upstream weights: the table's licences, or unknown when the source is not in it."""
    component = f"{kind}:{source or 'default'}"
    if kind == "imagebind":  # any ImageBind weights run ImageBind's code; its official weights are NC too
        code, weights, stated = PART_LICENCES[("imagebind", "")]
        note = stated if not source else f"{stated}; weights from {source} are taken to be ImageBind's"
        return PartLicence(part, component, classify_licence(code), classify_licence(weights), note)
    found = PART_LICENCES.get((kind, source or DEFAULT_SOURCES.get(kind, "")))
    if found is None:
        why = f"{source!r} is not in art2mus's licence table (art2mus/tracking/licences.py): its terms cannot be cleared"
        return PartLicence(part, component, Licence("", UNKNOWN, why), Licence("", UNKNOWN, why))
    code, weights, stated = found
    return PartLicence(part, component, classify_licence(code), classify_licence(weights), stated)


def part_licences(params: Params) -> list[PartLicence]:
    """The image encoder and the backbone the model was built from."""
    encoder = params.features.image_encoder
    if encoder.name == "tiny" and not encoder.source:
        parts = [art2mus_part("image encoder", "tiny", "a CLIP vision architecture at toy size, seeded weights")]
    elif encoder.name == "tiny":
        parts = [upstream_part("image encoder", "tiny", encoder.source)]
    else:
        parts = [upstream_part("image encoder", encoder.name, encoder.source)]
    backbone = params.backbone
    if backbone.profile == "tiny":
        parts.append(art2mus_part("backbone", "tiny", "trained by the prior stage on the train split's music, "
                                                      "whose licences are the tracks' above"))
    else:
        parts.append(upstream_part("backbone", "audioldm2", backbone.source))
    return parts


def is_embedded_sample(params: Params, root: Path) -> bool:
    """The data is the embedded sample (ingest reads what the sample stage wrote)."""
    sample = (root / params.sample.out_dir).resolve()
    return all((root / path).resolve().is_relative_to(sample)
               for path in (params.ingest.artgraph_dir, params.ingest.fma_dir))


def artwork_licence_column(artworks) -> str | None:
    return next((column for column in LICENCE_COLUMNS if column in artworks.columns), None)


def summarise_licences(params: Params, root: Path) -> LicenceSummary:
    """Licences of the train split's tracks and artworks and of the model's parts."""
    splits_path, artworks_path = root / SPLITS_TABLE, root / params.ingest.out_dir / ARTWORKS_MANIFEST
    for path in (splits_path, artworks_path):
        if not path.is_file():
            raise Art2MusError(f"licences: {path} is missing (run dvc repro)")
    splits = read_table(splits_path)
    if "license" not in splits.columns:
        raise Art2MusError(f"licences: {splits_path} has no `license` column (re-run the pair and split stages)")
    train = splits[splits["split"] == "train"]
    summary = LicenceSummary(tracks=count_licences(train["license"].tolist()), parts=part_licences(params))
    artworks = read_table(artworks_path)
    column = artwork_licence_column(artworks)
    if column is not None:
        licences = artworks.set_index("artwork_id")[column].reindex(train["artwork_id"])
        summary.artworks = count_licences(licences.tolist())
    elif is_embedded_sample(params, root):
        summary.artworks = [LicenceCount(classify_licence(SAMPLE_ARTWORKS), len(train))]
        summary.notes.append("embedded sample: artworks and music are synthesised by art2mus; the tracks' licence "
                             "strings are drawn at random from FMA's, so the licence policy has something to act on")
    else:
        summary.artworks = [LicenceCount(Licence("", UNKNOWN, f"{artworks_path} has no licence column "
                                                 f"({', '.join(LICENCE_COLUMNS)})"), len(train))]
    return summary


def describe(counts: list[LicenceCount], noun: str) -> list[str]:
    return [f"{row.licence.name or '(none)'!r}: {row.count} {noun}{'s' if row.count != 1 else ''} ({explain(row.licence)})"
            for row in counts]


def explain(licence: Licence) -> str:
    return "non-commercial" if licence.use == NONCOMMERCIAL else f"{licence.use}: {licence.why}"


def commercial_blockers(summary: LicenceSummary) -> list[str]:
    """One line per licence that forbids commercial use (non-commercial or unknown), with its count."""
    lines = describe([row for row in summary.tracks if row.licence.use != COMMERCIAL], "track")
    lines += describe([row for row in summary.artworks if row.licence.use != COMMERCIAL], "artwork")
    for part in summary.parts:
        for what, licence in (("code", part.code), ("weights", part.weights)):
            if licence.use != COMMERCIAL:
                lines.append(f"{part.part} {part.component} {what}: {licence.name or '(none)'!r} ({explain(licence)})")
    return lines


def policy_blockers(summary: LicenceSummary | None, intended_use: str) -> list[str]:
    """What forbids `intended_use` (empty: allowed). research: nothing; commercial: NC and unknown licences."""
    if intended_use == "research":
        return []
    if summary is None:
        return ["the version has no licence record (registered before licences were recorded): its terms "
                "cannot be cleared"]
    return commercial_blockers(summary)


def check_licences(summary: LicenceSummary | None, intended_use: str, version: str) -> None:
    """Refuse a promotion whose data or parts forbid the intended use, naming the offending licences."""
    blockers = policy_blockers(summary, intended_use)
    if blockers:
        raise LicenceBlocked(
            f"licences: version {version} may not be promoted for {intended_use} use "
            f"(params.yaml promotion.intended_use); {len(blockers)} licence(s) forbid it:\n"
            + "\n".join(f"  {line}" for line in blockers)
            + "\n(train on data whose licences permit it, or set promotion.intended_use: research if the model "
              "is for research only)")


def version_licences(tags: dict[str, str]) -> LicenceSummary | None:
    """The licence summary a model version carries in its tags, None when it has none."""
    raw = tags.get(LICENCES_TAG)
    if not raw:
        return None
    try:
        return LicenceSummary.from_dict(json.loads(raw))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise Art2MusError(f"licences: the version's `{LICENCES_TAG}` tag is not a licence summary: {error}") from None


def summary_lines(summary: LicenceSummary) -> list[str]:
    """A short human summary: per classification, how many items and which parts."""
    lines = []
    for noun, rows in (("track", summary.tracks), ("artwork", summary.artworks)):
        total = sum(row.count for row in rows)
        by_use: Counter[str] = Counter()
        for row in rows:
            by_use[row.licence.use] += row.count
        shares = ", ".join(f"{count} {use}" for use, count in sorted(by_use.items()))
        lines.append(f"{total} training {noun}s under {len(rows)} licence(s): {shares or 'none'}")
    for part in summary.parts:
        lines.append(f"{part.part} {part.component}: code {part.code.name or '(unknown)'} ({part.code.use}), "
                     f"weights {part.weights.name or '(unknown)'} ({part.weights.use})")
    return lines
