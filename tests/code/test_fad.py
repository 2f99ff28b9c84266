"""FAD: the Fréchet distance against independent computations, the set handling, and `art2mus fad`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from scipy.stats import ortho_group
from typer.testing import CliRunner

from art2mus.cli.main import app
from art2mus.config import AudioParams, SampleParams
from art2mus.data.sample import make_sample
from art2mus.errors import Art2MusError
from art2mus.evaluation.embedders import SpectralEmbedder, embed_file
from art2mus.evaluation.fad import ClipBootstrap, fad, frechet_distance, gaussian_fit, read_embedding_set

# 32 tracks per genre, 3.5 s each: 16 clips x 87 spectral rows = 1392 rows per half >= 10 x 128.
GENRE_SAMPLE = {"seed": 3, "n_artworks": 96, "n_extra_tracks": 0, "n_artists": 6, "image_size": 32,
                "track_seconds": 3.5}


def random_cov(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    factor = rng.normal(size=(dim, rank or 2 * dim))
    return factor @ factor.T / factor.shape[1]


def sqrtm_distance(mu1, cov1, mu2, cov2) -> float:
    """The textbook formulation, written independently: tr of scipy's sqrtm of the (non-symmetric) product."""
    root = scipy.linalg.sqrtm(cov1 @ cov2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(root).real)


def commuting_distance(mu1, a, mu2, b) -> float:
    """Closed form for covariances with one eigenbasis: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def grouped_rows(rng: np.random.Generator, n_clips: int, rows_per_clip: int, dim: int, shift: float = 0.0):
    """Rows in clips: each clip has its own centre, its frames scatter around it."""
    centres = rng.normal(size=(n_clips, dim)) + shift
    rows = np.repeat(centres, rows_per_clip, axis=0) + 0.3 * rng.normal(size=(n_clips * rows_per_clip, dim))
    return rows, np.repeat(np.arange(n_clips), rows_per_clip)


# ---- the distance against independent computations ----------------------------------------------
@pytest.mark.parametrize("dim", [1, 8, 64])
def test_frechet_distance_matches_the_closed_form_for_gaussians_with_one_eigenbasis(dim: int) -> None:
    rng = np.random.default_rng(dim)
    basis = ortho_group.rvs(dim, random_state=dim) if dim > 1 else np.ones((1, 1))
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    value = frechet_distance(mu1, basis @ np.diag(a) @ basis.T, mu2, basis @ np.diag(b) @ basis.T)
    assert value == pytest.approx(commuting_distance(mu1, a, mu2, b), rel=1e-9)


@pytest.mark.parametrize("dim", [4, 32, 128])
def test_frechet_distance_agrees_with_the_sqrtm_of_the_product(dim: int) -> None:
    rng = np.random.default_rng(100 + dim)
    mu1, mu2 = rng.normal(size=dim), 0.3 * rng.normal(size=dim)
    cov1, cov2 = random_cov(rng, dim), random_cov(rng, dim)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(sqrtm_distance(mu1, cov1, mu2, cov2), rel=1e-6)


def test_frechet_distance_handles_singular_covariances() -> None:
    dim, rng = 32, np.random.default_rng(5)
    basis = ortho_group.rvs(dim, random_state=5)
    a, b = rng.uniform(0.5, 2.0, dim), rng.uniform(0.5, 2.0, dim)
    a[20:], b[10:] = 0.0, 0.0  # ranks 20 and 10
    mu = rng.normal(size=dim)
    value = frechet_distance(mu, basis @ np.diag(a) @ basis.T, mu, basis @ np.diag(b) @ basis.T)
    assert value == pytest.approx(commuting_distance(mu, a, mu, b), rel=1e-6)
    # fewer rows than dimensions: a rank-deficient estimate against itself
    mean, cov = gaussian_fit(rng.normal(size=(10, dim)))
    assert np.linalg.matrix_rank(cov) < dim
    assert 0.0 <= frechet_distance(mean, cov, mean, cov) < 1e-6 * np.trace(cov)
    other_mean, other_cov = gaussian_fit(rng.normal(size=(10, dim)) + 1.0)
    assert np.isfinite(frechet_distance(mean, cov, other_mean, other_cov))


def test_frechet_distance_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---- FAD of sets --------------------------------------------------------------------------------
def test_fad_of_a_set_with_itself_is_zero_and_fad_is_symmetric() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 16)), rng.normal(size=(700, 16)) * 1.3 + 0.2
    same = fad(a, a, n_boot=0)
    assert abs(same.value) < 1e-9 * 16
    forward, backward = fad(a, b, n_boot=0, seed=3), fad(b, a, n_boot=0, seed=3)
    assert forward.n_used == backward.n_used == 500
    assert forward.value == pytest.approx(backward.value, rel=1e-9)


def test_fad_grows_with_a_planted_shift_and_matches_the_analytic_value() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4000, 8))
    values = [fad(base, rng.normal(size=(4000, 8)) + shift, n_boot=0).value for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] < 0.05
    assert values[-1] == pytest.approx(8 * 2.0 ** 2, rel=0.05)  # |shift|^2 summed over 8 dims
    widened = [fad(base, rng.normal(size=(4000, 8)) * scale, n_boot=0).value for scale in (1.0, 1.5, 2.0)]
    assert widened == sorted(widened)
    assert widened[-1] == pytest.approx(8 * (2.0 - 1.0) ** 2, rel=0.1)


def test_the_larger_set_is_cut_to_equal_size_by_whole_clips_seeded() -> None:
    rng = np.random.default_rng(2)
    ref, ref_clips = grouped_rows(rng, 40, 25, 4)  # 1000 rows
    gen, gen_clips = grouped_rows(rng, 12, 25, 4)  # 300 rows
    result = fad(ref, gen, ref_clips=ref_clips, gen_clips=gen_clips, n_boot=0, seed=7)
    assert (result.n_ref, result.n_gen, result.n_used) == (1000, 300, 300)
    assert result.clips_ref == 12 and result.clips_gen == 12  # 300 rows = 12 whole clips of 25
    again = fad(ref, gen, ref_clips=ref_clips, gen_clips=gen_clips, n_boot=0, seed=7)
    other = fad(ref, gen, ref_clips=ref_clips, gen_clips=gen_clips, n_boot=0, seed=8)
    assert again.value == result.value and other.value != result.value


def test_too_few_rows_for_the_dimension_is_marked_invalid() -> None:
    rng = np.random.default_rng(3)
    small = fad(rng.normal(size=(300, 32)), rng.normal(size=(400, 32)), n_boot=0)
    assert not small.valid and "300 rows per set < 10 x dim 32 = 320" in small.reason
    assert small.as_dict()["valid"] is False
    enough = fad(rng.normal(size=(320, 32)), rng.normal(size=(400, 32)), n_boot=0)
    assert enough.valid and enough.reason == ""


def test_the_bootstrap_resamples_clips_so_correlated_frames_widen_the_interval() -> None:
    rng = np.random.default_rng(4)
    ref, ref_clips = grouped_rows(rng, 30, 40, 4)
    gen, gen_clips = grouped_rows(rng, 30, 40, 4, shift=0.8)
    by_clip = fad(ref, gen, ref_clips=ref_clips, gen_clips=gen_clips, n_boot=200, seed=0)
    by_row = fad(ref, gen, n_boot=200, seed=0)  # pretends the 1200 frames are independent
    assert by_clip.value == by_row.value
    assert by_clip.low <= by_clip.value <= by_clip.high and by_clip.bias > 0
    assert (by_clip.high - by_clip.low) > 3 * (by_row.high - by_row.low)
    repeat = fad(ref, gen, ref_clips=ref_clips, gen_clips=gen_clips, n_boot=200, seed=0)
    assert (repeat.low, repeat.high) == (by_clip.low, by_clip.high)
    one_clip = fad(ref, gen, ref_clips=np.zeros(len(ref)), gen_clips=gen_clips, n_boot=50)
    assert one_clip.low is None and one_clip.high is None and one_clip.bias is None
    assert fad(ref, gen, n_boot=0).low is None


def test_clip_moments_and_row_refits_give_the_same_resampled_fits() -> None:
    rng = np.random.default_rng(8)
    rows, clips = grouped_rows(rng, 9, 20, 6, shift=5.0)  # a far-off mean: moments are kept centred
    clips = clips * 3 + 1  # clip ids need not be 0..n-1
    by_moments, by_rows = ClipBootstrap(rows, clips, moments=True), ClipBootstrap(rows, clips, moments=False)
    assert ClipBootstrap(rows, clips).moments and not ClipBootstrap(rows, np.arange(len(rows))).moments
    for seed in range(3):
        mean1, cov1 = by_moments.fit(np.random.default_rng(seed))
        mean2, cov2 = by_rows.fit(np.random.default_rng(seed))
        np.testing.assert_allclose(mean1, mean2, rtol=1e-10)
        np.testing.assert_allclose(cov1, cov2, rtol=1e-9, atol=1e-12)


def test_bad_sets_are_clear_errors() -> None:
    rng = np.random.default_rng(5)
    with pytest.raises(Art2MusError, match="reference set has 1 row"):
        fad(rng.normal(size=(1, 4)), rng.normal(size=(10, 4)))
    with pytest.raises(Art2MusError, match="different dimensions"):
        fad(rng.normal(size=(10, 4)), rng.normal(size=(10, 5)))
    broken = rng.normal(size=(10, 4))
    broken[3, 1] = np.nan
    with pytest.raises(Art2MusError, match="generated set holds non-finite"):
        fad(rng.normal(size=(10, 4)), broken)


# ---- on the sample: genres differ far more than halves of one genre ------------------------------
@pytest.fixture(scope="module")
def genre_sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("genres") / "sample"
    make_sample(SampleParams(**GENRE_SAMPLE), AudioParams(), root)
    factors = pd.read_csv(root / "factors.csv")
    return root, factors


def track_path(root: Path, track_id: int) -> Path:
    name = f"{track_id:06d}"
    return root / "fma" / "fma_large" / name[:3] / f"{name}.mp3"


def halves_of_each_genre(factors: pd.DataFrame) -> dict[str, tuple[list[int], list[int]]]:
    """Each genre's tracks split in two, alternating after sorting by the other musical factors."""
    halves = {}
    for genre, tracks in factors.groupby("genre_top"):
        ordered = tracks.sort_values(["register", "notes_per_second", "track_id"])["track_id"].tolist()
        halves[genre] = (ordered[0::2], ordered[1::2])
    return halves


def test_fad_between_two_genres_is_far_above_fad_between_halves_of_one_genre(genre_sample) -> None:
    root, factors = genre_sample
    embedder = SpectralEmbedder()
    rows = {track: embed_file(track_path(root, track), embedder) for track in factors["track_id"]}

    def fad_of(ref: list[int], gen: list[int]):
        ref_rows, gen_rows = [rows[t] for t in ref], [rows[t] for t in gen]
        return fad(np.concatenate(ref_rows), np.concatenate(gen_rows), n_boot=0,
                   ref_clips=np.repeat(np.arange(len(ref)), [len(r) for r in ref_rows]),
                   gen_clips=np.repeat(np.arange(len(gen)), [len(r) for r in gen_rows]))

    halves = halves_of_each_genre(factors)
    within = {genre: fad_of(*pair) for genre, pair in halves.items()}
    between = {(a, b): fad_of(halves[a][0], halves[b][1]) for a in halves for b in halves if a < b}
    assert all(result.valid for result in [*within.values(), *between.values()])
    # measured (seed 3): within 6-15, between 65-164
    worst_within = max(result.value for result in within.values())
    closest_between = min(result.value for result in between.values())
    assert closest_between > 3 * worst_within, ({g: r.value for g, r in within.items()},
                                                {p: r.value for p, r in between.items()})


# ---- the command --------------------------------------------------------------------------------
def copy_tracks(root: Path, tracks: list[int], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for track in tracks:
        shutil.copy(track_path(root, track), folder / track_path(root, track).name)
    return folder


def test_cli_on_folders_of_audio_lists_unreadable_files(genre_sample, tmp_path: Path) -> None:
    root, factors = genre_sample
    halves = halves_of_each_genre(factors)
    ref = copy_tracks(root, halves["Classical"][0][:6], tmp_path / "ref")
    gen = copy_tracks(root, halves["Rock"][0][:6], tmp_path / "gen" / "nested")
    (gen / "broken.wav").write_bytes(b"not audio at all")
    (gen / "empty.mp3").write_bytes(b"")
    (gen / "notes.txt").write_text("ignored: not audio")
    runner = CliRunner()
    result = runner.invoke(app, ["fad", str(ref), str(tmp_path / "gen"), "--n-boot", "20", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["name"] == "fad_spectral" and report["embedder_id"].startswith("spectral:")
    assert report["clips_ref"] == report["clips_gen"] == 6 and report["value"] > 0
    assert report["valid"] is False and "rows per set <" in report["reason"]  # 6 short clips: too few rows
    assert set(report["failed"]["gen"]) == {"nested/broken.wav", "nested/empty.mp3"}
    assert report["failed"]["gen"]["nested/empty.mp3"] == "zero-byte file" and report["failed"]["ref"] == {}

    text = runner.invoke(app, ["fad", str(ref), str(tmp_path / "gen"), "--n-boot", "0", "-q"])
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith("fad_spectral = ") and "INVALID:" in text.stdout
    assert "unreadable (gen): nested/broken.wav" in text.stderr


def test_cli_on_npy_embeddings_matches_the_library(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    ref, gen = rng.normal(size=(400, 8)), rng.normal(size=(300, 8)) + 0.5
    np.save(tmp_path / "ref.npy", ref)
    (tmp_path / "gen").mkdir()
    for clip in range(3):  # a folder of .npy files: each file one clip
        np.save(tmp_path / "gen" / f"clip{clip}.npy", gen[clip * 100: (clip + 1) * 100])
    np.save(tmp_path / "gen" / "wrong-dim.npy", rng.normal(size=(5, 3)))
    (tmp_path / "gen" / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    runner = CliRunner()
    result = runner.invoke(app, ["fad", str(tmp_path / "ref.npy"), str(tmp_path / "gen"), "--json", "--seed", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    ref_set, gen_set = read_embedding_set(tmp_path / "ref.npy"), read_embedding_set(tmp_path / "gen")
    assert np.array_equal(ref_set.clips, np.arange(400)) and ref_set.rows.dtype == np.float32
    expected = fad(ref_set.rows, gen_set.rows, ref_clips=ref_set.clips, gen_clips=gen_set.clips, seed=1)
    assert report["name"] == "fad_precomputed" and report["value"] == pytest.approx(expected.value, rel=1e-12)
    assert (report["low"], report["high"]) == pytest.approx((expected.low, expected.high))
    assert report["clips_ref"] == 300 and report["clips_gen"] == 3 and report["valid"]
    assert set(report["failed"]["gen"]) == {"wrong-dim.npy", "corrupt.npy"}
    assert "dimension 3 differs" in report["failed"]["gen"]["wrong-dim.npy"]

    named = runner.invoke(app, ["fad", str(tmp_path / "ref.npy"), str(tmp_path / "gen"), "--embedder", "clap",
                                "--json", "--n-boot", "0"])
    assert json.loads(named.stdout)["name"] == "fad_clap"  # .npy rows: the user names their embedder


def test_cli_errors_are_one_line_messages(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "mixed").mkdir()
    np.save(tmp_path / "mixed" / "a.npy", np.zeros((3, 2)))
    (tmp_path / "mixed" / "b.wav").write_bytes(b"")
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.wav").write_bytes(b"junk")
    cases = {
        ("missing", "audio"): "no such file or folder",
        ("mixed", "audio"): "holds both audio and .npy files",
        ("audio", "audio"): "no readable file",
    }
    for (ref, gen), message in cases.items():
        result = runner.invoke(app, ["fad", str(tmp_path / ref), str(tmp_path / gen), "-q"])
        assert result.exit_code == 1 and message in result.stderr, (ref, gen, result.output)
    vggish = runner.invoke(app, ["fad", str(tmp_path / "audio"), str(tmp_path / "audio"), "--embedder", "vggish",
                                 "--source", str(tmp_path / "vggish.pth")])
    assert vggish.exit_code == 1 and f"no weights at {tmp_path / 'vggish.pth'}" in vggish.stderr
    unknown = runner.invoke(app, ["fad", str(tmp_path / "audio"), str(tmp_path / "audio"), "--embedder", "inception"])
    assert unknown.exit_code == 1 and "unknown fad embedder 'inception'" in unknown.stderr
