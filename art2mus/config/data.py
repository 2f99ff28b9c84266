"""Sections of the data stages: audio, tracking, sample, ingest, validate_raw, features, pair, split,
validate_splits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from art2mus.config.base import Section


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

    @model_validator(mode="after")
    def _crop_holds_a_window(self) -> AudioParams:
        if self.crop_samples < self.n_fft:
            raise ValueError(f"crop_seconds {self.crop_seconds} is {self.crop_samples} samples, shorter than one STFT "
                             f"window (n_fft {self.n_fft}); give at least {self.n_fft / self.sample_rate:g} s")
        return self


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
    def _enough_artworks_per_artist(self) -> SampleParams:
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
    def _ordered(self) -> Range:
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
    def _sum_to_one(self) -> SplitRatios:
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


class ValidateSplitsParams(Section):
    min_pairs_per_split: SplitCounts = SplitCounts()
