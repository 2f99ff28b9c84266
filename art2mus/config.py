"""Typed, validated `params.yaml`: one pydantic model per section, one root model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from art2mus.errors import Art2MusError
from art2mus.evaluation.captions import DEFAULT_TEMPLATE as DEFAULT_CAPTION_TEMPLATE, template_parts

PARAMS_FILE = "params.yaml"


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


AUTO = "auto"  # a params.yaml value that `resolve_profile` replaces with the backbone profile's own
PINNED_REVISION = "0019cb0bd4d314accff72aee1c3abd6f22929ba5"  # cvssp/audioldm2-music's snapshot (moves: pin it)

# Keys whose value depends on `backbone.profile`: `auto` (or absent) in params.yaml takes these; an explicit
# value wins. The tiny values are also the sections' standalone defaults (sections built in code).
PROFILE_DEFAULTS: dict[str, dict[str, object]] = {
    "tiny": {
        "audio.crop_seconds": 2.56, "audio.crop_offset_seconds": 0.5,
        "sample.track_seconds": 4.0,
        "backbone.revision": "main", "backbone.null_conditioning": "zeros",
        "latents.batch_size": 32,
        "train.tokens": 4, "train.hidden_dim": 256, "train.steps": 300, "train.batch_size": 64,
        "train.grad_accum": 1, "train.lr": 2e-3, "train.warmup_steps": 15, "train.gradient_checkpointing": False,
        "evaluate.batch_size": 16,
    },
    # The paper's predecessor (Art2Mus 2024) on AudioLDM2-music: 10.24 s crops 10 s into the track, aligner
    # Linear(d -> 1536) - Tanh - Linear(1536 -> 4 x 768), AdamW 2e-5, batch 2 x 8, warm-up 500, 20k steps.
    "audioldm2": {
        "audio.crop_seconds": 10.24, "audio.crop_offset_seconds": 10.0,
        "sample.track_seconds": 21.0,
        "backbone.revision": PINNED_REVISION, "backbone.null_conditioning": "zeros",
        "latents.batch_size": 4,
        "train.tokens": 4, "train.hidden_dim": 1536, "train.steps": 20000, "train.batch_size": 16,
        "train.grad_accum": 8, "train.lr": 2e-5, "train.warmup_steps": 500, "train.gradient_checkpointing": True,
        "evaluate.batch_size": 4,
    },
}
REAL_CROP_SECONDS = 10.24  # what cvssp/audioldm2-music was trained on: 1,024 mel frames


def available_threads() -> int:
    """Torch threads for `threads: auto`: OMP_NUM_THREADS where it is set (a job scheduler's or a test
    worker's share), else the CPUs this process may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def resolve_threads(value: object) -> object:
    return available_threads() if value == AUTO else value


# CPU threads of a stage's torch work: a number, or auto (available_threads).
Threads = Annotated[int, BeforeValidator(resolve_threads), Field(ge=1)]


class AudioParams(Section):
    sample_rate: int = Field(16000, gt=0)
    n_mels: int = Field(64, gt=0)
    hop_length: int = Field(160, gt=0)
    n_fft: int = Field(1024, gt=0)
    crop_seconds: float = Field(2.56, gt=0)  # auto: the prior's length (tiny 2.56 s, AudioLDM2 10.24 s)
    crop_offset_seconds: float = Field(0.5, ge=0)  # auto: tiny 0.5 s, AudioLDM2 10 s into the track

    @property
    def crop_samples(self) -> int:
        return round(self.crop_seconds * self.sample_rate)


class TrackingParams(Section):
    experiment: str = Field("art2mus", min_length=1)


class SampleParams(Section):
    seed: int = 0
    out_dir: str = "data/sample"
    n_artworks: int = Field(384, ge=8)
    n_extra_tracks: int = Field(32, ge=0)
    n_artists: int = Field(48, ge=3)
    image_size: int = Field(128, ge=32, le=1024)
    track_seconds: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _enough_artworks_per_artist(self) -> "SampleParams":
        if self.n_artists > self.n_artworks:
            raise ValueError("n_artists must not exceed n_artworks")
        return self


class ArtGraphColumns(Section):
    """Our column name -> the ArtGraph export's column name."""

    name: str = "name"
    title: str = "title"
    artist: str = "artist"
    style: str = "style"
    genre: str = "genre"
    date: str = "date"


class ArtGraphParams(Section):
    metadata_file: str = "artgraph.csv"
    images_dir: str = "imagesf2"
    columns: ArtGraphColumns = ArtGraphColumns()


class FmaParams(Section):
    size: Literal["small", "medium", "large", "full"] = "large"


class IngestParams(Section):
    artgraph_dir: str = "data/sample/artgraph"
    fma_dir: str = "data/sample/fma"
    out_dir: str = "data/interim"
    artgraph: ArtGraphParams = ArtGraphParams()
    fma: FmaParams = FmaParams()
    workers: int = Field(2, ge=1)


class Range(Section):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class ValidateRawParams(Section):
    max_quarantine_ratio: float = Field(0.05, ge=0, le=1)
    min_artworks: int = Field(16, ge=1)
    min_tracks: int = Field(16, ge=1)
    track_seconds: Range = Range(min=1.0, max=1200.0)
    sample_rates: list[int] = [8000, 11025, 16000, 22050, 32000, 44100, 48000]
    image_modes: list[str] = ["RGB", "L", "RGBA", "CMYK", "P"]
    max_image_side: int = Field(20000, gt=0)


class EncoderSpec(Section):
    """A frozen encoder: which kind, where its weights are (hub id or local path), which revision."""

    name: Literal["tiny", "clip", "imagebind", "clap"] = "tiny"
    source: str = ""  # "" = the kind's default (tiny: built from a config in code, seeded)
    revision: str = "main"


class FeaturesParams(Section):
    image_encoder: EncoderSpec = EncoderSpec()
    audio_embedder: EncoderSpec = EncoderSpec()
    out_dir: str = "data/features"
    batch_size: int = Field(16, ge=1)
    shard_size: int = Field(512, ge=1)


class SimilarityParams(Section):
    """One-to-one assignment by cross-modal cosine similarity in a declared shared space."""

    min_similarity: float = Field(0.0, ge=-1, le=1)
    dense_max: int = Field(5000, ge=1)  # above this many items: sparse top-k candidates
    top_k: int = Field(32, ge=1)


class PairParams(Section):
    method: Literal["given", "similarity"] = "given"
    pairs_file: str = "data/sample/artsound_pairs.csv"  # for method: given
    similarity: SimilarityParams = SimilarityParams()


class SplitRatios(Section):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitRatios":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"ratios must sum to 1, got {total:g}")
        return self


class SplitParams(Section):
    ratios: SplitRatios = SplitRatios()
    group_by: Literal["artist"] = "artist"
    stratify_by: Literal["style", "genre"] = "style"
    seed: int = 0


class SplitCounts(Section):
    train: int = Field(16, ge=0)
    val: int = Field(4, ge=0)
    test: int = Field(16, ge=0)


class TinyBackboneParams(Section):
    """Sizes of the tiny AudioLDM2 (the prototype's, learnability-notes.md)."""

    unet_channels: tuple[int, ...] = Field((32, 32, 32), min_length=1)  # one UNet level per entry
    attention_levels: int = Field(1, ge=1)  # cross-attention at this many coarsest levels (+ mid block)
    layers_per_block: int = Field(1, ge=1)
    attention_head_dim: int = Field(4, ge=1)
    lm_width: int = Field(32, ge=8)
    lm_layers: int = Field(1, ge=1)
    lm_heads: int = Field(4, ge=1)
    t5_width: int = Field(32, ge=8)
    audio_tokens: int = Field(4, ge=1)  # the audio encoder's tokens into GPT-2 (AudioMAE's role)
    fold_time: int = Field(8, ge=1)
    fold_mel: int = Field(4, ge=1)
    # The prior's diffusion target: epsilon-trained tiny priors sample off-distribution (x0 error
    # amplified ~80x at t ~ 999); v-prediction keeps samples at the data's scale.
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"


class BackboneParams(Section):
    """The frozen music prior: `tiny` (trained by the prior stage) or AudioLDM2 itself."""

    profile: Literal["tiny", "audioldm2"] = "tiny"
    source: str = "cvssp/audioldm2-music"  # audioldm2: hub id or local path
    revision: str = "main"  # auto: AudioLDM2's pinned snapshot (a local folder is identified by its hash)
    max_new_tokens: int = Field(8, ge=1)  # LOA vectors generated by GPT-2
    # The unconditional LOA of classifier-free guidance: zeros (what AudioLDM2 and the tiny prior were
    # trained with as their dropped conditioning) or empty_prompt (GPT-2's LOA for "", diffusers' choice).
    null_conditioning: Literal["zeros", "empty_prompt"] = "zeros"
    device: str = "auto"  # where the frozen prior runs: auto = cuda when a GPU is visible, else cpu
    tiny: TinyBackboneParams = TinyBackboneParams()


class PriorParams(Section):
    """Training the tiny prior on the train split's music (skipped with the real backbone)."""

    out_dir: str = "models/prior"
    steps: int = Field(400, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    cond_dropout: float = Field(0.1, ge=0, lt=1)
    random_crops: bool = True  # crops anywhere in the track (the factors are stationary)
    seed: int = 0
    threads: Threads = Field(AUTO, validate_default=True)


class LatentsParams(Section):
    """VAE (or tiny codec) latents of every track's crop, cached by content hash."""

    out_dir: str = "data/latents"
    batch_size: int = Field(32, ge=1)


class TrainParams(Section):
    """The image aligner and its optimisation (only the aligner trains)."""

    out_dir: str = "models/aligner"
    tokens: int = Field(4, ge=1)  # K tokens into GPT-2
    hidden_dim: int = Field(256, ge=1)
    depth: int = Field(2, ge=1)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(15, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_snr_gamma: float | None = Field(None, gt=0)
    seed: int = 0
    threads: Threads = Field(AUTO, validate_default=True)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    # Recompute the frozen UNet's activations in the backward pass (~1.6x compute, ~1/3 the memory at 10.24 s).
    gradient_checkpointing: bool = False
    # Data-parallel processes: the stage relaunches itself under torchrun; auto = every visible GPU.
    processes: int | Literal["auto"] = Field(1)

    @model_validator(mode="after")
    def _micro_batch_divides(self) -> "TrainParams":
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must divide by grad_accum ({self.grad_accum})")
        if isinstance(self.processes, int) and self.processes < 1:
            raise ValueError("processes must be at least 1 (or auto)")
        return self

    @property
    def micro_batch(self) -> int:
        """Samples per forward/backward pass (batch_size / grad_accum), across all processes."""
        return self.batch_size // self.grad_accum


class FadEmbedderSpec(Section):
    """The audio embedder FAD is computed in; its name is part of the metric's (`fad_<name>`)."""

    name: Literal["spectral", "tiny", "clap", "imagebind", "vggish"] = "spectral"  # spectral: no weights
    source: str = ""
    revision: str = "main"
    postprocess: bool = False  # vggish only: AudioSet PCA + 8-bit quantisation (vggish_pca_params beside the weights)


class EvaluateParams(Section):
    """How a model is evaluated on a split (the `evaluate` stage and `art2mus evaluate --model`)."""

    out_dir: str = "reports/evaluate"
    split: Literal["train", "val", "test"] = "test"
    seed: int = 0  # candidates, noise and timestep draws, generation: the same for every model
    k: int = Field(8, ge=2)  # retrieval among k candidate artworks
    draws: int = Field(16, ge=1)  # noise/timestep draws per (track, candidate)
    t_range: tuple[int, int] = (300, 900)
    untrained_seeds: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1)
    scheduler: Literal["dpmsolver++", "ddim"] = "dpmsolver++"
    steps: int = Field(25, ge=1)
    guidance_scale: float = Field(3.5, ge=0)
    seconds: float | None = Field(None, gt=0)  # None: the prior's crop
    batch_size: int = Field(16, ge=1)
    max_items: int | None = Field(None, ge=1)  # cap on generated items (None: the whole split)
    report_items: int = Field(12, ge=0)  # artworks shown with players in the HTML report
    fad_embedder: FadEmbedderSpec = FadEmbedderSpec()
    fad_resamples: int = Field(200, ge=0)
    score_embedder: EncoderSpec = EncoderSpec(name="tiny")  # ImageBindScore's audio side (imagebind: AM too)
    planted_tracks: int = Field(160, ge=0)  # train tracks the sample's planted-factor estimator learns from; 0 = off
    # Which conditionings generate music (the model always; mean and untrained are its baselines).
    generate: list[Literal["trained", "mean", "untrained"]] = Field(
        default_factory=lambda: ["trained", "mean", "untrained"], min_length=1)
    tagger: str = ""  # an ASTForAudioClassification (local path or hub id) for the KL; "" = KL absent
    threads: Threads = Field(AUTO, validate_default=True)
    # The text-conditioned AudioLDM2 on metadata captions (row `text_captions`): auto = when the backbone
    # is the real AudioLDM2 (the tiny one has no language: reported absent with the reason), off = never.
    caption_baseline: Literal["auto", "off"] = "auto"
    caption_template: str = DEFAULT_CAPTION_TEMPLATE  # art2mus/evaluation/captions.py: {fields}, [optional parts]

    @model_validator(mode="after")
    def _caption_template_is_valid(self) -> "EvaluateParams":
        template_parts(self.caption_template)
        if "trained" not in self.generate:
            raise ValueError("generate must include trained (the model itself)")
        if 0 < self.planted_tracks < 8:
            raise ValueError(f"planted_tracks: {self.planted_tracks} is too few for the estimator (0 = off, or >= 8)")
        return self


class ValidateSplitsParams(Section):
    min_pairs_per_split: SplitCounts = SplitCounts()


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
    def _one_metric_must_win(self) -> "PromotionParams":
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
    def _profile_fits(self) -> "Params":
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


def resolve_profile(raw: dict) -> dict:
    """A copy of raw params with every `auto` (or absent) profile-dependent key set to the profile's value."""
    backbone = raw.get("backbone")
    if isinstance(backbone, BaseModel):
        profile = backbone.profile
    else:
        profile = (backbone or {}).get("profile", "tiny") if isinstance(backbone, dict) else "tiny"
    defaults = PROFILE_DEFAULTS.get(profile)
    if defaults is None:
        return raw  # an unknown profile: the field's own validation names it
    resolved = dict(raw)
    for dotted, value in defaults.items():
        section, key = dotted.split(".")
        current = resolved.get(section)
        if isinstance(current, BaseModel):
            continue  # a section built in code is taken as it is
        if current is None:
            current = {}
        if not isinstance(current, dict):
            continue  # the section's validation reports it
        if current.get(key, AUTO) == AUTO:
            resolved[section] = {**current, key: value}
    return resolved


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
