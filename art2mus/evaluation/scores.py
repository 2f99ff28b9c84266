"""Paired scores of generated audio: ImageBindScore (AM, MM) and the KL of an audio tagger's labels.

Every score is over pairs (item i: an artwork, its reference track, the audio generated from it)
and reported as a mean with a percentile bootstrap interval over pairs.

- ImageBindScore AM: cosine(image embedding, generated-audio embedding). Only meaningful when both
  embeddings live in one declared shared space (ImageBind's image and audio branches declare
  "imagebind"); any other pair of encoders is refused, even when the sizes match.
- ImageBindScore MM: cosine(reference-audio embedding, generated-audio embedding), both from one
  audio embedder.
- KL: per pair, KL(p_ref || p_gen) where p is the softmax over a pretrained audio tagger's label
  logits (an `ASTForAudioClassification`, e.g. an AudioSet-finetuned AST, from a local path or hub
  id), then the mean over pairs. Without a usable tagger the result is "absent" with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from art2mus.errors import Art2MusError
from art2mus.evaluation.correspondence import Interval, bootstrap_interval
from art2mus.models.encoders import AudioEmbedder, ImageEncoder, local_digest, resample

logger = logging.getLogger(__name__)


# ---- ImageBindScore -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageBindScore:
    """AM (image vs generated audio) and MM (reference vs generated audio) mean cosines with intervals."""

    am: Interval | None  # None without images
    mm: Interval | None  # None without reference audio
    n: int  # pairs
    space: str | None  # the shared space AM was computed in
    image_encoder_id: str = ""
    audio_encoder_id: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"am": self.am.as_dict() if self.am else None, "mm": self.mm.as_dict() if self.mm else None,
                "n": self.n, "space": self.space, "image_encoder_id": self.image_encoder_id,
                "audio_encoder_id": self.audio_encoder_id}


def paired_cosines(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """cosine(a[i], b[i]) for every row i."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise Art2MusError(f"paired embeddings must be two [n, dim] matrices of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if not np.all(norms > 0):
        raise Art2MusError(f"zero-length embedding in pair(s) {np.flatnonzero(norms == 0)[:5].tolist()}")
    return (a * b).sum(axis=1) / norms


def shared_space(image_space: str | None, audio_space: str | None) -> str:
    """The one space both encoders declare; refuse anything else (cosines across spaces mean nothing)."""
    if image_space is None or image_space != audio_space:
        raise Art2MusError(
            f"ImageBindScore AM needs image and audio embeddings in one declared shared space (ImageBind's); "
            f"got image space {image_space!r} and audio space {audio_space!r}: use the imagebind image encoder "
            "and audio embedder"
        )
    return image_space


def image_bind_score(
    generated: np.ndarray | torch.Tensor,
    *,
    images: np.ndarray | torch.Tensor | None = None,
    references: np.ndarray | torch.Tensor | None = None,
    image_space: str | None = None,
    audio_space: str | None = None,
    image_encoder_id: str = "",
    audio_encoder_id: str = "",
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> ImageBindScore:
    """AM and MM from paired embeddings: row i of `images`/`references` belongs to row i of `generated`."""
    if images is None and references is None:
        raise Art2MusError("ImageBindScore needs images (for AM), reference audio (for MM), or both")
    n = len(generated)
    if n == 0:
        raise Art2MusError("ImageBindScore: no generated audio")
    am = mm = None
    space = None
    if images is not None:
        space = shared_space(image_space, audio_space)
        am = bootstrap_interval(paired_cosines(images, generated), seed=seed, resamples=n_boot, level=ci)
    if references is not None:
        mm = bootstrap_interval(paired_cosines(references, generated), seed=seed, resamples=n_boot, level=ci)
    return ImageBindScore(am=am, mm=mm, n=n, space=space, image_encoder_id=image_encoder_id,
                          audio_encoder_id=audio_encoder_id)


def embed_in_batches(embed: Any, items: list, batch_size: int, *args: Any) -> torch.Tensor:
    return torch.cat([embed(items[start: start + batch_size], *args) for start in range(0, len(items), batch_size)])


def image_bind_score_of(
    audio_embedder: AudioEmbedder,
    generated: list[np.ndarray],
    sample_rate: int,
    *,
    image_encoder: ImageEncoder | None = None,
    images: list[Image.Image] | None = None,
    references: list[np.ndarray] | None = None,
    batch_size: int = 16,
    **options: Any,
) -> ImageBindScore:
    """ImageBindScore from media: embeds images and audio with the given (frozen) encoders."""
    if images is not None:
        if image_encoder is None:
            raise Art2MusError("ImageBindScore AM needs an image encoder for the images")
        shared_space(image_encoder.shared_space, audio_embedder.shared_space)  # refuse before embedding
    for name, items in (("images", images), ("references", references)):
        if items is not None and len(items) != len(generated):
            raise Art2MusError(f"ImageBindScore: {len(items)} {name} for {len(generated)} generated clips")
    generated_embeds = embed_in_batches(audio_embedder.embed_audio, generated, batch_size, sample_rate)
    image_embeds = (None if images is None or image_encoder is None
                    else embed_in_batches(image_encoder.embed_images, images, batch_size))
    reference_embeds = (None if references is None
                        else embed_in_batches(audio_embedder.embed_audio, references, batch_size, sample_rate))
    return image_bind_score(
        generated_embeds, images=image_embeds, references=reference_embeds,
        image_space=image_encoder.shared_space if image_encoder else None, audio_space=audio_embedder.shared_space,
        image_encoder_id=image_encoder.encoder_id if image_encoder else "", audio_encoder_id=audio_embedder.encoder_id,
        **options,
    )


# ---- KL of an audio tagger's label distributions ------------------------------------------------
class AudioTagger(Protocol):
    """Mono waveforms in, one row of label logits per waveform out."""

    tagger_id: str
    sample_rate: int

    def label_logits(self, waveforms: list[np.ndarray], sample_rate: int) -> np.ndarray: ...


class AstAudioTagger:
    """`ASTForAudioClassification` on its own `ASTFeatureExtractor` fbanks (clips cut/padded to its length)."""

    def __init__(self, model: Any, feature_extractor: Any, tagger_id: str, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.feature_extractor = feature_extractor
        self.tagger_id = tagger_id
        self.device = device
        self.sample_rate = int(feature_extractor.sampling_rate)

    @torch.inference_mode()
    def label_logits(self, waveforms: list[np.ndarray], sample_rate: int) -> np.ndarray:
        waves = [resample(wave, sample_rate, self.sample_rate) for wave in waveforms]
        inputs = self.feature_extractor(waves, sampling_rate=self.sample_rate, return_tensors="pt")
        values = inputs["input_values"].to(self.device, dtype=self.model.dtype)
        return self.model(input_values=values).logits.float().cpu().numpy()

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)


def load_audio_tagger(source: str, revision: str = "main", device: str = "cpu") -> AstAudioTagger:
    """An AST audio tagger from a local directory or a hub id (offline: local copies only)."""
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    path = Path(source).expanduser()
    local = path.exists()
    try:
        if local:
            model = ASTForAudioClassification.from_pretrained(str(path))
            extractor = ASTFeatureExtractor.from_pretrained(str(path))
        else:
            model = ASTForAudioClassification.from_pretrained(source, revision=revision)
            extractor = ASTFeatureExtractor.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as error:
        what = ("is not a saved ASTForAudioClassification" if local
                else "is not available locally and cannot be downloaded here")
        raise Art2MusError(f"audio tagger {source!r} {what}: {str(error).splitlines()[0]}") from None
    tagger_id = f"ast:local@{local_digest(path.resolve())[:16]}" if local else f"ast:{source}@{revision}"
    return AstAudioTagger(model, extractor, tagger_id, device)


def label_kl(ref_logits: np.ndarray, gen_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(gen)) per row, in nats."""
    from scipy.special import log_softmax

    ref_logits, gen_logits = np.asarray(ref_logits, np.float64), np.asarray(gen_logits, np.float64)
    if ref_logits.ndim != 2 or ref_logits.shape != gen_logits.shape:
        raise Art2MusError(f"label logits must be two [n, labels] matrices of one shape, got "
                           f"{ref_logits.shape} and {gen_logits.shape}")
    log_p, log_q = log_softmax(ref_logits, axis=1), log_softmax(gen_logits, axis=1)
    return np.clip((np.exp(log_p) * (log_p - log_q)).sum(axis=1), 0.0, None)


@dataclass(frozen=True)
class KlResult:
    """The tagger KL, or why there is none."""

    status: str  # "ok" | "absent"
    reason: str  # why absent ("" when ok)
    value: Interval | None
    n: int
    tagger_id: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status, "reason": self.reason, "value": self.value.as_dict() if self.value else None,
                "n": self.n, "tagger_id": self.tagger_id}


def tagger_kl(
    tagger: AudioTagger,
    references: list[np.ndarray],
    generated: list[np.ndarray],
    sample_rate: int,
    *,
    batch_size: int = 8,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> KlResult:
    """Mean over pairs of KL(tagger labels of the reference || of the generated audio)."""
    if len(references) != len(generated) or not generated:
        raise Art2MusError(f"tagger KL needs paired audio: {len(references)} references, {len(generated)} generated")
    ref_logits = np.concatenate([tagger.label_logits(references[start: start + batch_size], sample_rate)
                                 for start in range(0, len(references), batch_size)])
    gen_logits = np.concatenate([tagger.label_logits(generated[start: start + batch_size], sample_rate)
                                 for start in range(0, len(generated), batch_size)])
    value = bootstrap_interval(label_kl(ref_logits, gen_logits), seed=seed, resamples=n_boot, level=ci)
    return KlResult(status="ok", reason="", value=value, n=len(generated), tagger_id=tagger.tagger_id)


def kl_score(
    references: list[np.ndarray],
    generated: list[np.ndarray],
    sample_rate: int,
    tagger_source: str = "",
    revision: str = "main",
    **options: Any,
) -> KlResult:
    """The tagger KL with the tagger at `tagger_source`; "absent" (with the reason) when there is none."""
    if not tagger_source:
        return KlResult(status="absent", reason="no audio tagger configured (a local path or hub id of an "
                        "ASTForAudioClassification)", value=None, n=len(generated))
    try:
        tagger = load_audio_tagger(tagger_source, revision)
    except Art2MusError as error:
        logger.warning("tagger KL absent: %s", error)
        return KlResult(status="absent", reason=str(error), value=None, n=len(generated))
    return tagger_kl(tagger, references, generated, sample_rate, **options)
