"""Sections of what follows training: promotion, alerts, gc, serving."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from art2mus.config.base import Section


class MetricRule(Section):
    """How one promotion metric is compared: which way is better and by how much it must win."""

    direction: Literal["higher", "lower"] = "higher"
    # Required lower confidence bound of the paired improvement: >= 0 means "must be better";
    # < 0 is a tolerated regression (non-inferiority margin).
    min_improvement: float = 0.0


class PromotionParams(Section):
    """Champion/challenger promotion (art2mus/tracking/promotion.py explains the rule)."""

    require_approval: bool = False  # the challenger waits for `art2mus promote VERSION`
    # What the model may be used for (art2mus/tracking/licences.py): research allows non-commercial
    # licences; commercial blocks promoting a model whose data or parts are non-commercial or unknown.
    intended_use: Literal["research", "commercial"] = "research"
    confidence: float = Field(0.95, gt=0.5, lt=1)  # one-sided level of the lower confidence bound
    resamples: int = Field(9999, ge=100)  # paired bootstrap resamples
    seed: int = 0
    metrics: dict[str, MetricRule] = Field(
        default_factory=lambda: {"retrieval_top1": MetricRule(), "gap": MetricRule(min_improvement=-0.01)},
        min_length=1)
    floors: dict[str, float] = Field(default_factory=lambda: {"retrieval_top1": 0.25})

    @model_validator(mode="after")
    def _one_metric_must_win(self) -> PromotionParams:
        if not any(rule.min_improvement >= 0 for rule in self.metrics.values()):
            raise ValueError("at least one metric needs min_improvement >= 0, or an equal challenger would win")
        unknown = sorted(set(self.floors) - set(self.metrics))
        if unknown:
            raise ValueError(f"floors on undeclared metrics: {', '.join(unknown)} (declare them under metrics)")
        return self


class AlertsParams(Section):
    """Failure alerts of the flows (art2mus/alerts.py): a Prefect notification block, or a webhook URL
    from the environment; never a URL in a tracked file."""

    block: str = "custom-webhook/art2mus-alerts"  # <block type slug>/<name>; "" = only the environment's webhook
    webhook_env: str = "ART2MUS_ALERT_WEBHOOK"  # a webhook URL in this variable wins over the block


class GcParams(Section):
    """What `art2mus gc` keeps besides the champion, the challenger and the workspace's dvc.lock."""

    keep_versions: int = Field(3, ge=0)  # previous champions a rollback can return to, newest first


PILLOW_MAX_IMAGE_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: Pillow warns above it and refuses above twice it


class ServingParams(Section):
    """Limits of the served model (art2mus/serving/pyfunc.py): over any of them a request is answered with
    HTTP 400 naming the limit. A server has no params.yaml: they travel in the logged model's model_config."""

    max_pixels: int = Field(16_777_216, ge=1, le=PILLOW_MAX_IMAGE_PIXELS)  # per image, from its header (4,096 x 4,096)
    max_rows: int = Field(16, ge=1)  # images per request
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)  # per image, as sent (before base64 encoding)
    max_seconds: float = Field(30.0, gt=0)
    max_steps: int = Field(200, ge=1)
    max_guidance_scale: float = Field(20.0, ge=0)
