"""Fréchet Audio Distance between a reference and a generated set, with bootstrap intervals.

FAD fits a Gaussian (mean, covariance) to the embedding rows of each set and returns the squared
Fréchet (2-Wasserstein) distance between the two Gaussians:

    d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1^½ S2 S1^½)^½)

Numerics: everything in float64. tr((S1 S2)^½) is computed from the symmetric PSD matrix
S1^½ S2 S1^½ (same eigenvalues as S1 S2), with S1^½ from `eigh` and both eigen-decompositions
clipped at zero. Near-singular covariances (fewer rows than dimensions, constant features)
then need no diagonal offset and no complex square roots; d² is clipped at 0 against rounding.

How sets are compared:
- Equal size. FAD is biased upward by about tr(S)/N, so the larger set is cut to the smaller
  one's row count: its clips are taken in a seeded random order, whole, and the last one taken
  is cut short. Both sets then estimate their covariances from the same number of rows.
- Validity. With fewer rows per set than `min_rows_per_dim` x dim (10 x dim by default) the
  covariance estimate is too poor for the number to mean much: the result is computed but
  marked `valid: false` with the reason.
- Bootstrap. Rows of one clip (frames of one file) are correlated, so the interval resamples
  clips, not rows: each resample draws each set's clips with replacement (independently per set)
  and weights every row by its clip's count (`np.cov` frequency weights). With one matrix of
  clip-level rows each row is its own clip. Fewer than 2 clips in a set: no interval.
  Resamples hold repeated clips, so their FADs carry a larger small-sample bias than the point
  value: their raw percentiles can lie wholly above it (measured on the sample: FAD 9.0, raw
  95% percentiles 9.8-59.8). The interval is therefore the bootstrap's spread centred on the
  point value: percentiles minus `bias` = mean(resampled FAD) - FAD, clipped at 0. `bias` is
  reported too: it is the bootstrap's estimate of how much finite sets inflate the value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from art2mus.errors import Art2MusError
from art2mus.evaluation.embedders import (
    AUDIO_SUFFIXES,
    EmbeddedSet,
    FrameEmbedder,
    embed_folder,
    load_frame_embedder,
    metric_name,
)

MIN_ROWS_PER_DIM = 10
MOMENT_BYTES = 512 * 2**20  # per set: above this the bootstrap refits rows instead of keeping clip moments


# ---- the distance -------------------------------------------------------------------------------
def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr((cov1 cov2)^½) through the symmetric S1^½ S2 S1^½."""
    root = psd_sqrt(cov1)
    middle = root @ cov2 @ root
    values = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or cov1.shape != (dim, dim) or cov2.shape != (dim, dim):
        raise ValueError(f"shapes do not match: mu {mu1.shape} {mu2.shape}, cov {cov1.shape} {cov2.shape}")
    cov1, cov2 = (cov1 + cov1.T) / 2, (cov2 + cov2.T) / 2
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt_product(cov1, cov2)
    return max(float(distance), 0.0)


def gaussian_fit(rows: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of the rows, optionally with integer frequency weights."""
    rows = np.asarray(rows, np.float64)
    mean = np.average(rows, axis=0, weights=weights)
    cov = np.atleast_2d(np.cov(rows, rowvar=False, fweights=weights))
    return mean, cov


# ---- sets of rows -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FadResult:
    """One FAD value with its bootstrap interval and what it was computed from."""

    name: str  # fad_<embedder>
    value: float
    low: float | None
    high: float | None
    ci: float  # the interval's confidence level
    bias: float | None  # bootstrap estimate of the small-sample bias (mean resampled FAD - value)
    n_ref: int  # rows before equalising
    n_gen: int
    n_used: int  # rows per set after equalising
    clips_ref: int  # clips in the equal-size sets (the bootstrap's unit)
    clips_gen: int
    dim: int
    valid: bool
    reason: str  # why not valid ("" when valid)
    n_boot: int
    seed: int
    embedder_id: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def clip_ids(clips: np.ndarray | None, n: int) -> np.ndarray:
    """Clip index per row; without one, every row is its own clip."""
    if clips is None:
        return np.arange(n)
    clips = np.asarray(clips)
    if clips.shape != (n,):
        raise ValueError(f"clips has shape {clips.shape}, expected ({n},)")
    return clips


def equal_size(rows: np.ndarray, clips: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` rows after shuffling whole clips (seeded); the last clip taken may be cut short."""
    if len(rows) == n:
        return rows, clips
    _, inverse = np.unique(clips, return_inverse=True)
    clip_rank = rng.permutation(inverse.max() + 1)[inverse]
    keep = np.sort(np.argsort(clip_rank, kind="stable")[:n])
    return rows[keep], clips[keep]


class ClipBootstrap:
    """Gaussian fits of one set's clip resamples (drawn with replacement, rows weighted by draw count).

    When clips hold several rows and their moments fit in memory, each clip's row count, sum and
    scatter matrix (of rows centred on the set's mean) are kept, so a resample costs
    O(clips x dim²) instead of O(rows x dim²); otherwise rows are refitted with frequency weights.
    Both give the same fit for the same draws.
    """

    def __init__(self, rows: np.ndarray, clips: np.ndarray, moments: bool | None = None) -> None:
        self.rows = rows
        _, self.clip_index = np.unique(clips, return_inverse=True)
        self.n_clips = int(self.clip_index.max()) + 1
        dim = rows.shape[1]
        fits_in_memory = self.n_clips * dim * dim * 8 <= MOMENT_BYTES
        self.moments = (fits_in_memory and 2 * self.n_clips <= len(rows)) if moments is None else moments
        if self.moments:
            self.offset = rows.mean(axis=0)
            centred = rows - self.offset
            self.counts = np.bincount(self.clip_index, minlength=self.n_clips)
            self.sums = np.zeros((self.n_clips, dim))
            np.add.at(self.sums, self.clip_index, centred)
            self.scatters = np.stack([centred[self.clip_index == clip].T @ centred[self.clip_index == clip]
                                      for clip in range(self.n_clips)])

    def fit(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of one resample of the clips."""
        draws = np.bincount(rng.integers(0, self.n_clips, self.n_clips), minlength=self.n_clips)
        if not self.moments:
            weights = draws[self.clip_index]
            keep = weights > 0
            return gaussian_fit(self.rows[keep], weights[keep])
        total = float(draws @ self.counts)
        mean = (draws @ self.sums) / total
        scatter = np.tensordot(draws.astype(np.float64), self.scatters, axes=1)
        cov = (scatter - total * np.outer(mean, mean)) / (total - 1)
        return mean + self.offset, cov


def check_rows(rows: np.ndarray, which: str) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise Art2MusError(f"fad: the {which} set is not a [rows, dim] matrix (shape {rows.shape})")
    if len(rows) < 2:
        raise Art2MusError(f"fad: the {which} set has {len(rows)} row(s); a covariance needs at least 2")
    if not np.isfinite(rows).all():
        raise Art2MusError(f"fad: the {which} set holds non-finite values")
    return rows.astype(np.float64)


def fad(
    ref_rows: np.ndarray,
    gen_rows: np.ndarray,
    *,
    ref_clips: np.ndarray | None = None,
    gen_clips: np.ndarray | None = None,
    name: str = "fad",
    embedder_id: str = "",
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    min_rows_per_dim: int = MIN_ROWS_PER_DIM,
) -> FadResult:
    """FAD between two sets of rows at equal size, with a clip-bootstrap interval (module docstring)."""
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    ref, gen = check_rows(ref_rows, "reference"), check_rows(gen_rows, "generated")
    if ref.shape[1] != gen.shape[1]:
        raise Art2MusError(f"fad: the sets have different dimensions ({ref.shape[1]} vs {gen.shape[1]})")
    ref_ids, gen_ids = clip_ids(ref_clips, len(ref)), clip_ids(gen_clips, len(gen))
    rng = np.random.default_rng(seed)
    n = min(len(ref), len(gen))
    ref, ref_ids = equal_size(ref, ref_ids, n, rng)
    gen, gen_ids = equal_size(gen, gen_ids, n, rng)
    dim = ref.shape[1]
    value = frechet_distance(*gaussian_fit(ref), *gaussian_fit(gen))

    n_ref_clips, n_gen_clips = len(np.unique(ref_ids)), len(np.unique(gen_ids))
    low = high = bias = None
    if n_boot > 0 and n_ref_clips >= 2 and n_gen_clips >= 2:
        ref_boot, gen_boot = ClipBootstrap(ref, ref_ids), ClipBootstrap(gen, gen_ids)
        draws = np.array([frechet_distance(*ref_boot.fit(rng), *gen_boot.fit(rng)) for _ in range(n_boot)])
        bias = float(draws.mean() - value)
        tail = (1 - ci) / 2
        low = max(float(np.quantile(draws, tail)) - bias, 0.0)
        high = max(float(np.quantile(draws, 1 - tail)) - bias, 0.0)

    needed = min_rows_per_dim * dim
    valid = n >= needed
    reason = "" if valid else (f"{n} rows per set < {min_rows_per_dim} x dim {dim} = {needed}: "
                               "too few for a reliable covariance")
    return FadResult(name=name, value=value, low=low, high=high, ci=ci, bias=bias, n_ref=len(ref_rows),
                     n_gen=len(gen_rows), n_used=n, clips_ref=n_ref_clips, clips_gen=n_gen_clips, dim=dim,
                     valid=valid, reason=reason, n_boot=n_boot, seed=seed, embedder_id=embedder_id)


def fad_sets(ref: EmbeddedSet, gen: EmbeddedSet, *, name: str, embedder_id: str = "", **options) -> FadResult:
    """`fad` on two embedded sets, bootstrapping their clips."""
    return fad(ref.rows, gen.rows, ref_clips=ref.clips, gen_clips=gen.clips, name=name, embedder_id=embedder_id,
               **options)


# ---- sets on disk: folders of audio, .npy matrices ----------------------------------------------
def npy_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(item for item in path.rglob("*.npy")
                  if item.is_file() and not any(part.startswith(".") for part in item.relative_to(path).parts))


def read_npy(path: Path) -> np.ndarray:
    """One .npy embedding file as [rows, dim] float32 (a vector is one row); ValueError says why not."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"cannot read .npy: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if not isinstance(array, np.ndarray):
        raise ValueError("not a single array (an .npz archive?)")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"not a real-valued array (dtype {array.dtype})")
    array = np.atleast_2d(array)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"expected a [rows, dim] matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("non-finite values")
    return array.astype(np.float32)


def read_embedding_set(path: str | Path) -> EmbeddedSet:
    """Rows from one .npy matrix (each row its own clip) or a folder of .npy files (each file one clip)."""
    path = Path(path)
    files = npy_files(path)
    if not files:
        raise Art2MusError(f"{path}: no .npy files")
    blocks: list[np.ndarray] = []
    clips: list[np.ndarray] = []  # per block: the clip index of each row
    names: list[str] = []
    failed: dict[str, str] = {}
    for item in files:
        name = item.name if path.is_file() else item.relative_to(path).as_posix()
        try:
            rows = read_npy(item)
        except ValueError as error:
            failed[name] = str(error)
            continue
        if blocks and rows.shape[1] != blocks[0].shape[1]:
            failed[name] = f"dimension {rows.shape[1]} differs from {names[0]}'s {blocks[0].shape[1]}"
            continue
        single_matrix = path.is_file()
        clips.append(np.arange(len(rows)) if single_matrix else np.full(len(rows), len(names)))
        names.extend([f"{name}[{row}]" for row in range(len(rows))] if single_matrix else [name])
        blocks.append(rows)
    if not blocks:
        return EmbeddedSet(np.empty((0, 0), np.float32), np.empty(0, int), [], failed)
    return EmbeddedSet(np.concatenate(blocks), np.concatenate(clips), names, failed)


def set_kind(path: Path) -> str:
    """"npy" or "audio": what a REF/GEN argument holds."""
    if path.is_file():
        if path.suffix.lower() == ".npy":
            return "npy"
        raise Art2MusError(f"{path}: expected a folder of audio or .npy files, or one .npy matrix")
    if not path.is_dir():
        raise Art2MusError(f"{path}: no such file or folder")
    suffixes = {item.suffix.lower() for item in path.rglob("*") if item.is_file()}
    has_npy, has_audio = ".npy" in suffixes, bool(suffixes & set(AUDIO_SUFFIXES))
    if has_npy and has_audio:
        raise Art2MusError(f"{path}: holds both audio and .npy files; point at a folder of one kind")
    if not (has_npy or has_audio):
        raise Art2MusError(f"{path}: no audio ({', '.join(AUDIO_SUFFIXES)}) or .npy files")
    return "npy" if has_npy else "audio"


@dataclass
class FadReport:
    """A FAD result and the files of each set that gave no rows."""

    result: FadResult
    failed: dict[str, dict[str, str]] = field(default_factory=dict)  # "ref"/"gen" -> file -> why

    def as_dict(self) -> dict[str, object]:
        return {**self.result.as_dict(), "failed": self.failed}


def fad_paths(
    ref: str | Path,
    gen: str | Path,
    embedder: str | None = None,
    source: str = "",
    *,
    quiet: bool = False,
    **options,
) -> FadReport:
    """FAD between two folders of audio or .npy embeddings.

    Audio is embedded with `embedder` (default `spectral`); .npy rows are taken as given, so they
    must come from the embedder named (without one, the metric is `fad_precomputed`).
    """
    paths = {"ref": Path(ref), "gen": Path(gen)}
    kinds = {which: set_kind(path) for which, path in paths.items()}
    needs_audio = "audio" in kinds.values()
    name = embedder or ("spectral" if needs_audio else "precomputed")
    frame_embedder: FrameEmbedder | None = load_frame_embedder(name, source) if needs_audio else None
    sets = {}
    for which, path in paths.items():
        if kinds[which] == "audio" and frame_embedder is not None:
            sets[which] = embed_folder(path, frame_embedder, quiet=quiet)
        else:
            sets[which] = read_embedding_set(path)
        if not len(sets[which].rows):
            raise Art2MusError(f"{path}: no readable file ({len(sets[which].failed)} failed: "
                               + "; ".join(f"{k}: {v}" for k, v in list(sets[which].failed.items())[:5]) + ")")
    embedder_id = frame_embedder.embedder_id if frame_embedder else ""
    result = fad_sets(sets["ref"], sets["gen"], name=metric_name(name), embedder_id=embedder_id, **options)
    return FadReport(result, {which: sets[which].failed for which in paths})
