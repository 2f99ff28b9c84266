"""The whole params.yaml (`Params`) and reading it: one line per invalid setting."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError, model_validator

from art2mus.config.base import Section
from art2mus.config.data import (
    AudioParams,
    FeaturesParams,
    IngestParams,
    PairParams,
    SampleParams,
    SplitParams,
    TrackingParams,
    ValidateRawParams,
    ValidateSplitsParams,
)
from art2mus.config.model import BackboneParams, EvaluateParams, LatentsParams, PriorParams, TrainParams
from art2mus.config.operations import AlertsParams, GcParams, PromotionParams, ServingParams
from art2mus.config.profiles import REAL_CROP_SECONDS, resolve_profile
from art2mus.errors import Art2MusError

PARAMS_FILE = "params.yaml"


class Params(Section):
    """The whole of params.yaml; `auto` values resolve to the backbone profile's (PROFILE_DEFAULTS)."""

    audio: AudioParams = AudioParams()
    tracking: TrackingParams = TrackingParams()
    sample: SampleParams = SampleParams()
    ingest: IngestParams = IngestParams()
    validate_raw: ValidateRawParams = ValidateRawParams()
    features: FeaturesParams = FeaturesParams()
    pair: PairParams = PairParams()
    split: SplitParams = SplitParams()
    validate_splits: ValidateSplitsParams = ValidateSplitsParams()
    backbone: BackboneParams = BackboneParams()
    prior: PriorParams = PriorParams()
    latents: LatentsParams = LatentsParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    promotion: PromotionParams = PromotionParams()
    alerts: AlertsParams = AlertsParams()
    gc: GcParams = GcParams()
    serving: ServingParams = ServingParams()

    @model_validator(mode="before")
    @classmethod
    def _resolve_profile(cls, data: object) -> object:
        return resolve_profile(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _profile_fits(self) -> Params:
        if self.backbone.profile == "audioldm2" and abs(self.audio.crop_seconds - REAL_CROP_SECONDS) > 1e-6:
            raise ValueError(f"audio.crop_seconds: {self.audio.crop_seconds:g} s cannot work with backbone.profile "
                             f"audioldm2, whose prior was trained on {REAL_CROP_SECONDS:g} s (use auto)")
        if self.backbone.profile == "tiny" and self.backbone.null_conditioning != "zeros":
            raise ValueError("backbone.null_conditioning: the tiny prior has no language (no empty prompt); "
                             "its null is the zeros it saw in its conditioning dropout")
        if self.sample.track_seconds < self.audio.crop_offset_seconds + self.audio.crop_seconds:
            raise ValueError(f"sample.track_seconds: {self.sample.track_seconds:g} s is shorter than the model's crop "
                             f"(audio.crop_offset_seconds + audio.crop_seconds = "
                             f"{self.audio.crop_offset_seconds + self.audio.crop_seconds:g} s)")
        return self


class ConfigError(Art2MusError):
    """params.yaml is missing, unreadable or invalid."""


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: the key's dotted name, what was expected, what was found."""
    lines = [f"{source}: {error.error_count()} invalid setting(s):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif not item["loc"]:  # a whole-file check: its message names the keys involved
            lines.append(f"  {item['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def missing_sections(raw: dict) -> list[str]:
    """The sections of params.yaml (the fields of `Params`, in file order) that `raw` lacks."""
    return [name for name in Params.model_fields if name not in raw]


def parse_params(raw: object, source: str = PARAMS_FILE, *, require_sections: bool = False) -> Params:
    """Validate an already-loaded params mapping.

    With `require_sections` (a whole params file: `art2mus params`, `art2mus repro`) every section must be
    present, since DVC reads each stage's section from the file itself; keys inside a section may still be
    omitted where a default or the profile supplies them. Without it (mappings built in code, tests), an
    absent section takes its defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    if require_sections and (missing := missing_sections(raw)):
        raise ConfigError(f"{source}: missing section(s): {', '.join(missing)} (every section of params.yaml "
                          "is required, even if all its keys are left to their defaults: write `name: {}`)")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_params(path: str | Path = PARAMS_FILE, *, require_sections: bool = False) -> Params:
    """Read and validate params.yaml (relative paths resolve against the working directory).

    `require_sections`: refuse a file that lacks a section (see `parse_params`); the commands that validate
    the whole pipeline's file set it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_params(raw, str(path), require_sections=require_sections)
