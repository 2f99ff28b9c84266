"""Typed, validated `params.yaml`: one pydantic model per section, one root model.

The public surface: `from art2mus.config import X`. The parts: `base` (the section base), `profiles`
(`auto` values by backbone profile, `threads: auto`), `data`, `model` and `operations` (the sections, by
the stages they configure), `params` (the root model and reading params.yaml)."""

from art2mus.config.base import Section
from art2mus.config.data import (
    ArtGraphColumns,
    ArtGraphParams,
    AudioParams,
    EncoderSpec,
    FeaturesParams,
    FmaParams,
    IngestParams,
    PairParams,
    Range,
    SampleParams,
    SimilarityParams,
    SplitCounts,
    SplitParams,
    SplitRatios,
    TrackingParams,
    ValidateRawParams,
    ValidateSplitsParams,
)
from art2mus.config.model import (
    BackboneParams,
    EvaluateParams,
    FadEmbedderSpec,
    LatentsParams,
    PriorParams,
    TinyBackboneParams,
    TrainParams,
)
from art2mus.config.operations import PILLOW_MAX_IMAGE_PIXELS, AlertsParams, GcParams, MetricRule, PromotionParams, ServingParams
from art2mus.config.params import (
    PARAMS_FILE,
    ConfigError,
    Params,
    format_validation_error,
    load_params,
    missing_sections,
    parse_params,
)
from art2mus.config.profiles import (
    AUTO,
    PINNED_REVISION,
    PROFILE_DEFAULTS,
    REAL_CROP_SECONDS,
    Threads,
    available_threads,
    resolve_profile,
    resolve_threads,
)

__all__ = [
    "AUTO", "PARAMS_FILE", "PILLOW_MAX_IMAGE_PIXELS", "PINNED_REVISION", "PROFILE_DEFAULTS", "REAL_CROP_SECONDS",
    "AlertsParams", "ArtGraphColumns", "ArtGraphParams", "AudioParams", "BackboneParams", "ConfigError",
    "EncoderSpec", "EvaluateParams", "FadEmbedderSpec", "FeaturesParams", "FmaParams", "GcParams",
    "IngestParams", "LatentsParams", "MetricRule", "PairParams", "Params", "PriorParams", "PromotionParams",
    "Range", "SampleParams", "Section", "ServingParams", "SimilarityParams", "SplitCounts", "SplitParams",
    "SplitRatios", "Threads", "TinyBackboneParams", "TrackingParams", "TrainParams", "ValidateRawParams",
    "ValidateSplitsParams", "available_threads", "format_validation_error", "load_params", "missing_sections",
    "parse_params", "resolve_profile", "resolve_threads",
]
