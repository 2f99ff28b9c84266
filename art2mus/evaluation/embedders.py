"""Frame-level audio embedders for FAD: each turns one waveform into a [rows, dim] matrix.

FAD fits a Gaussian to many rows per set, so an evaluation embedder returns several rows per
clip (frames or windows), not one vector. Kinds (`load_frame_embedder(name)`):

- `spectral` (default, no weights): AudioLDM2's own front-end (art2mus.models.audio: 16 kHz,
  n_fft 1024, hop 160, 64 Slaney mels up to 8 kHz, log with floor 1e-5) plus first-order deltas
  (torchaudio's `compute_deltas`, 5-frame regression), one 128-d row every `stride` frames
  (default 4: one row per 40 ms, 25 rows per second). Not normalised, so level and spectral
  balance count. Its metric is `fad_spectral`: a spectral-statistics distance, never VGGish-FAD.
- `tiny`, `clap`, `imagebind`: the clip embedders of art2mus.models.encoders (same weights, same
  ids) applied to consecutive windows of each clip, one row per window: tiny 1 s, CLAP its
  feature extractor's window (10 s for laion/clap-htsat-unfused), ImageBind 2 s (its clip length).
  A tail of at least half a window becomes one more window aligned to the clip's end; a clip
  shorter than a window is one row.
- `vggish`: torchvggish's VGGish (the `art2mus[vggish]` extra) on its own front-end
  (`waveform_to_examples` at 16 kHz: 25 ms windows, 10 ms hop, 64 mels 125-7500 Hz, log offset
  0.01), one 128-d row per non-overlapping 0.96 s example. Weights: the official state dict
  `vggish-10086976.pth` as a file, a folder holding it, an http(s) URL (only when reachable), or,
  with no source, torch hub's checkpoint cache where torchvggish keeps it. Raw embeddings as
  Google's FAD and fadtk use them; `postprocess=True` adds the AudioSet PCA-whitening and 8-bit
  quantisation with `vggish_pca_params-970ea276.pth` found beside the weights.

The metric name is always `fad_<kind>` (`metric_name`).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from art2mus.config import AudioParams, EncoderSpec
from art2mus.errors import Art2MusError
from art2mus.models.audio import AudioDecodeError, log_mel, mel_transform, read_mono
from art2mus.models.encoders import IMAGEBIND_AUDIO, AudioEmbedder, load_audio_embedder, resample
from art2mus.models.encoders.clap import ClapAudioEmbedder

logger = logging.getLogger(__name__)

FRAME_EMBEDDERS = ("spectral", "clap", "imagebind", "vggish", "tiny")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".aif", ".aiff", ".au")
SPECTRAL_VERSION = 1  # bump when the spectral rows change
WINDOW_SECONDS = {"tiny": 1.0, "imagebind": float(IMAGEBIND_AUDIO["clip_duration"])}  # clap: its extractor's
MIN_SECONDS = 0.1  # shorter clips are reported as failed rather than embedded as near-silence


class FrameEmbedder(Protocol):
    """One mono waveform in, a [rows, dim] float32 matrix out (rows = frames or windows)."""

    name: str
    embedder_id: str
    dim: int
    sample_rate: int

    def embed_frames(self, wave: np.ndarray, sample_rate: int) -> np.ndarray: ...


def metric_name(embedder: str) -> str:
    """The FAD metric's name for an embedder kind: it always says which embedding it is."""
    return f"fad_{embedder}"


# ---- spectral: log-mel frames + deltas, no weights ----------------------------------------------
class SpectralEmbedder:
    """Per-frame log-mel (AudioLDM2's front-end) and its deltas, one row every `stride` frames."""

    name = "spectral"

    def __init__(self, audio: AudioParams | None = None, stride: int = 4) -> None:
        import torchaudio

        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}")
        self.audio = audio or AudioParams()
        self.stride = stride
        self.sample_rate = self.audio.sample_rate
        self.dim = 2 * self.audio.n_mels
        self.transform = mel_transform(self.audio)
        self.compute_deltas = torchaudio.functional.compute_deltas
        a = self.audio
        self.embedder_id = (f"spectral:v{SPECTRAL_VERSION}-logmel{a.n_mels}+delta-sr{a.sample_rate}"
                            f"-fft{a.n_fft}-hop{a.hop_length}-stride{stride}")

    @torch.inference_mode()
    def embed_frames(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        wave = resample(wave, sample_rate, self.sample_rate)
        if len(wave) < self.audio.hop_length:
            raise AudioDecodeError(f"too short for one frame ({len(wave)} samples at {self.sample_rate} Hz)")
        mel = log_mel(torch.from_numpy(wave)[None], self.audio, self.transform)[0]  # [frames, n_mels]
        deltas = self.compute_deltas(mel.T.contiguous()).T  # compute_deltas runs along the last axis
        return torch.cat([mel, deltas], dim=1)[:: self.stride].numpy().astype(np.float32)


# ---- clip embedders on windows ------------------------------------------------------------------
class WindowedEmbedder:
    """A clip embedder (`AudioEmbedder`) applied to consecutive windows: one row per window."""

    def __init__(self, name: str, embedder: AudioEmbedder, window_seconds: float) -> None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds}")
        self.name = name
        self.embedder = embedder
        self.window_seconds = window_seconds
        self.embedder_id = f"{embedder.encoder_id}/window{window_seconds:g}s"
        self.dim = int(embedder.dim)
        self.sample_rate = int(embedder.sample_rate)

    def windows(self, wave: np.ndarray) -> list[np.ndarray]:
        """Consecutive windows of a waveform at the embedder's rate (see the module docstring)."""
        size = round(self.window_seconds * self.sample_rate)
        if len(wave) <= size:
            return [wave]
        starts = list(range(0, len(wave) - size + 1, size))
        if len(wave) - (starts[-1] + size) >= size / 2:
            starts.append(len(wave) - size)
        return [wave[start: start + size] for start in starts]

    def embed_frames(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        wave = resample(wave, sample_rate, self.sample_rate)
        return self.embedder.embed_audio(self.windows(wave), self.sample_rate).numpy().astype(np.float32)


VGGISH_WEIGHTS = "vggish-10086976.pth"  # torchvggish's release names
VGGISH_PCA = "vggish_pca_params-970ea276.pth"


class VggishEmbedder:
    """torchvggish's VGGish on its own log-mel examples: one 128-d row per 0.96 s."""

    name = "vggish"
    dim = 128
    sample_rate = 16000

    def __init__(self, model: torch.nn.Module, embedder_id: str) -> None:
        from torchvggish import vggish_input

        self.model = model.eval()
        self.embedder_id = embedder_id
        self.waveform_to_examples = vggish_input.waveform_to_examples

    @torch.inference_mode()
    def embed_frames(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        wave = resample(wave, sample_rate, self.sample_rate).astype(np.float64)
        examples = self.waveform_to_examples(wave, self.sample_rate, return_tensor=False)
        if len(examples) == 0:
            raise AudioDecodeError(f"too short for one VGGish example (0.975 s at {self.sample_rate} Hz)")
        embeddings = self.model(torch.from_numpy(examples).float()[:, None])
        return embeddings.reshape(len(examples), self.dim).numpy().astype(np.float32)


def vggish_weights_path(source: str) -> Path:
    """The local VGGish state dict `source` names; a clear error naming where it looked."""
    if source.startswith(("http://", "https://")):
        try:
            return vggish_download(source)
        except OSError as error:
            raise Art2MusError(f"fad embedder 'vggish': weights URL {source} is not reachable ({error})") from None
    path = Path(source).expanduser() if source else Path(torch.hub.get_dir()) / "checkpoints" / VGGISH_WEIGHTS
    if path.is_dir():
        path = path / VGGISH_WEIGHTS
    if not path.is_file():
        raise Art2MusError(
            f"fad embedder 'vggish': no weights at {path}; give the official state dict {VGGISH_WEIGHTS} "
            "(a file or its folder) as the embedder's source, or use --embedder spectral (no weights)")
    return path


def vggish_download(url: str) -> Path:
    """Fetch a VGGish file into torch hub's checkpoint cache (once) and return its path."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target), progress=False)
        except ValueError as error:  # a malformed URL; URLError, HTTPError and timeouts are OSErrors
            raise OSError(f"{error.__class__.__name__}: {error}") from None
    return target


def load_vggish_file(path: Path, what: str) -> dict:
    """torch.load a VGGish release file: tensors, or (the PCA file) numpy arrays, never other pickles."""
    reconstruct = np._core.multiarray._reconstruct  # type: ignore[attr-defined]  # numpy 2's private module, no stubs
    # The release's PCA file was pickled by numpy 1.x, which named the module numpy.core.
    numpy_globals = [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
                     type(np.dtype(np.float64)), type(np.dtype(np.float32))]
    try:
        with torch.serialization.safe_globals(numpy_globals):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise Art2MusError(f"{path}: not a VGGish {what} file ({error.__class__.__name__}: "
                           f"{str(error).splitlines()[0][:200]})") from None


def load_vggish(source: str = "", postprocess: bool = False) -> VggishEmbedder:
    """VGGish with weights from `source` (see the module docstring); PCA postprocessing when asked."""
    try:
        import torchvggish
    except ImportError:
        raise Art2MusError("fad embedder 'vggish' needs torchvggish: pip install -c constraints.txt "
                           "'art2mus[vggish]'") from None
    path = vggish_weights_path(source)
    model = torchvggish.torchvggish._vgg(postprocess=False)  # _vgg builds the network without downloading
    state = load_vggish_file(path, "weights")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise Art2MusError(f"{path}: not VGGish weights ({str(error).splitlines()[0][:200]})") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    embedder_id = f"vggish:{path.name}@{digest}"
    if postprocess:
        pca_path = path.parent / VGGISH_PCA
        if not pca_path.is_file():
            raise Art2MusError(f"fad embedder 'vggish' with postprocessing: no PCA params at {pca_path}")
        pca = load_vggish_file(pca_path, "PCA params")
        # torchvggish's Postprocessor fetches its file in __init__; build it from ours instead.
        processor = torchvggish.torchvggish.Postprocessor.__new__(torchvggish.torchvggish.Postprocessor)
        processor._pca_matrix = torch.as_tensor(pca["pca_eigen_vectors"]).float()
        processor._pca_means = torch.as_tensor(pca["pca_means"]).reshape(-1, 1).float()
        model.postprocess, model.pproc = True, processor
        embedder_id += "+pca"
    return VggishEmbedder(model, embedder_id)


def load_frame_embedder(name: str = "spectral", source: str = "", revision: str = "main",
                        device: str = "cpu", postprocess: bool = False) -> FrameEmbedder:
    """The FAD embedder `name`, with weights from `source` (a local path or hub id) where it has any.

    `postprocess` is VGGish's PCA + quantisation (vggish only)."""
    if name not in FRAME_EMBEDDERS:
        raise Art2MusError(f"unknown fad embedder {name!r}; choose one of: {', '.join(FRAME_EMBEDDERS)}")
    if postprocess and name != "vggish":
        raise Art2MusError(f"postprocess is VGGish's PCA step; the {name} fad embedder has none")
    if name == "spectral":
        if source:
            raise Art2MusError(f"the spectral fad embedder has no weights; drop the source {source!r}")
        return SpectralEmbedder()
    if name == "vggish":
        return load_vggish(source, postprocess)
    embedder = load_audio_embedder(EncoderSpec(name=name, source=source, revision=revision), device)
    if isinstance(embedder, ClapAudioEmbedder):  # its window is its feature extractor's
        window = embedder.feature_extractor.nb_max_samples / embedder.sample_rate
    else:
        window = WINDOW_SECONDS[name]
    return WindowedEmbedder(name, embedder, window)


# ---- a folder of audio files -> rows ------------------------------------------------------------
@dataclass
class EmbeddedSet:
    """The rows of one set, which clip (file) each row came from, and the files that gave none."""

    rows: np.ndarray  # [N, dim] float32
    clips: np.ndarray  # [N] int: index into `files`
    files: list[str]  # clip names (paths relative to the set's root)
    failed: dict[str, str] = field(default_factory=dict)  # file -> why it gave no rows

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])


def audio_files(folder: Path) -> list[Path]:
    """Audio files under `folder` (recursively, hidden ones skipped), in a stable order."""
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def embed_wave(wave: np.ndarray, sample_rate: int, embedder: FrameEmbedder) -> np.ndarray:
    """The rows of one waveform; AudioDecodeError says why there are none."""
    if len(wave) < MIN_SECONDS * sample_rate:
        raise AudioDecodeError(f"too short ({len(wave) / sample_rate:.3f} s < {MIN_SECONDS} s)")
    rows = np.asarray(embedder.embed_frames(wave, sample_rate), dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != embedder.dim:
        raise AudioDecodeError(f"embedder returned shape {rows.shape}, expected [rows, {embedder.dim}]")
    if not np.isfinite(rows).all():
        raise AudioDecodeError("non-finite embedding")
    return rows


def embed_file(path: Path, embedder: FrameEmbedder) -> np.ndarray:
    """The rows of one audio file; AudioDecodeError says why there are none."""
    if path.stat().st_size == 0:
        raise AudioDecodeError("zero-byte file")
    return embed_wave(read_mono(path, embedder.sample_rate), embedder.sample_rate, embedder)


def embedded_set(blocks: list[np.ndarray], files: list[str], failed: dict[str, str], dim: int) -> EmbeddedSet:
    """Stack per-clip rows into one set; row clip ids index `files`."""
    if not blocks:
        return EmbeddedSet(np.empty((0, dim), np.float32), np.empty(0, int), [], failed)
    clips = np.repeat(np.arange(len(blocks)), [len(block) for block in blocks])
    return EmbeddedSet(np.concatenate(blocks), clips, files, failed)


def embed_waveforms(waves: list[np.ndarray], sample_rate: int, embedder: FrameEmbedder,
                    names: list[str] | None = None) -> EmbeddedSet:
    """Embed in-memory clips (e.g. freshly generated audio); clips too short to embed are listed in `failed`."""
    names = names or [str(index) for index in range(len(waves))]
    if len(names) != len(waves):
        raise ValueError(f"{len(names)} names for {len(waves)} waveforms")
    blocks, files, failed = [], [], {}
    for name, wave in zip(names, waves):
        try:
            blocks.append(embed_wave(np.asarray(wave, np.float32), sample_rate, embedder))
            files.append(name)
        except AudioDecodeError as error:
            failed[name] = str(error)
    return embedded_set(blocks, files, failed, embedder.dim)


def embed_folder(folder: str | Path, embedder: FrameEmbedder, quiet: bool = False) -> EmbeddedSet:
    """Embed every audio file under `folder`; unreadable files are listed in `failed`, not fatal."""
    folder = Path(folder)
    if not folder.is_dir():
        raise Art2MusError(f"{folder}: not a folder")
    paths = audio_files(folder)
    if not paths:
        raise Art2MusError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    blocks, files, failed = [], [], {}
    for path in tqdm(paths, desc=f"{embedder.name} embeddings", unit="file", disable=quiet, leave=False):
        name = path.relative_to(folder).as_posix()
        try:
            blocks.append(embed_file(path, embedder))
            files.append(name)
        except AudioDecodeError as error:
            failed[name] = str(error).removeprefix(f"{path}: ")
    if failed:
        logger.warning("%s: %d of %d audio files gave no embedding", folder, len(failed), len(paths))
    return embedded_set(blocks, files, failed, embedder.dim)
