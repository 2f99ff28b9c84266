"""The embedded sample: real layouts, determinism, and a planted correspondence simple probes recover."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio
from PIL import Image
from scipy.stats import chi2_contingency, chisquare
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import art2mus.data.sample as sample_module
from art2mus.config import AudioParams, SampleParams
from art2mus.data.sample import (
    COMPOSITION_STYLES,
    COMPOSITION_TIMBRES,
    FACTORS,
    TIMBRE_GENRE_TOP,
    make_sample,
)

SMALL = {"n_artworks": 96, "n_extra_tracks": 16, "n_artists": 12, "image_size": 64, "track_seconds": 4.0}
TINY = {"n_artworks": 8, "n_extra_tracks": 2, "n_artists": 3, "image_size": 32, "track_seconds": 1.0}
AUDIO = AudioParams()
MIN_PROBE_ACCURACY = 0.8
MAX_NUISANCE_ACCURACY = 0.55  # chance is 1/3 for the tercile labels
MIN_INDEPENDENCE_P = 1e-3
SECTORS_DEG = [(0, 20), (20, 70), (70, 91)]  # band orientation: vertical, oblique/rings, horizontal
IMAGE_NUISANCES = ["image_rotation_deg", "image_phase", "image_brightness", "image_saturation"]
AUDIO_NUISANCES = ["audio_detune_cents", "audio_peak", "audio_noise_floor", "melody_contour"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample") / "sample"
    summary = make_sample(SampleParams(seed=7, **SMALL), AUDIO, root)
    return root, summary


@pytest.fixture(scope="module")
def factors(sample: tuple[Path, dict]) -> pd.DataFrame:
    return pd.read_csv(sample[0] / "factors.csv")


def read_tracks(root: Path) -> pd.DataFrame:
    """tracks.csv exactly as FMA's own utils.py reads it."""
    tracks = pd.read_csv(root / "fma" / "fma_metadata" / "tracks.csv", index_col=0, header=[0, 1])
    for column in [("track", "genres"), ("track", "genres_all"), ("track", "tags")]:
        tracks[column] = tracks[column].map(ast.literal_eval)
    return tracks


def track_file(root: Path, track_id: int) -> Path:
    name = f"{track_id:06d}"
    return root / "fma" / "fma_large" / name[:3] / f"{name}.mp3"


# ---- probe features -----------------------------------------------------------------------------
def image_features(path: Path) -> np.ndarray:
    """Saturation-weighted hue histogram, band-frequency profile and band orientation."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=float)
        hsv = np.asarray(image.convert("HSV"), dtype=float)
    hue_histogram, _ = np.histogram(hsv[..., 0], bins=12, range=(0, 256), weights=hsv[..., 1])
    hue_histogram = hue_histogram / hue_histogram.sum()

    gray = rgb.mean(axis=-1)
    power = np.abs(np.fft.fft2(gray - gray.mean())) ** 2
    size = gray.shape[0]
    fy, fx = np.meshgrid(np.fft.fftfreq(size, 1 / size), np.fft.fftfreq(size, 1 / size), indexing="ij")
    radius = np.hypot(fx, fy)  # cycles per image
    angle = np.degrees(np.arctan2(np.abs(fy), np.abs(fx)))  # 0: varies along x (vertical bands)
    edges = [1.0, 1.5, 2.5, 3.5, 5.0, 7.0, 10.0, 14.0, 20.0, size / 2]
    radial = np.array([power[(radius >= lo) & (radius < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    band = (radius >= 1.0) & (radius < size / 2)
    sectors = np.array([power[band & (angle >= lo) & (angle < hi)].sum() for lo, hi in SECTORS_DEG])
    return np.concatenate([hue_histogram, log_shares(radial), log_shares(sectors)])


def log_shares(energies: np.ndarray) -> np.ndarray:
    return np.log(energies / energies.sum() + 1e-6)


def audio_crop(path: Path) -> np.ndarray:
    """The crop the model sees."""
    samples, sample_rate = sf.read(path, dtype="float32")
    assert sample_rate == AUDIO.sample_rate
    start = round(AUDIO.crop_offset_seconds * sample_rate)
    return samples[start : start + AUDIO.crop_samples]


@functools.cache
def audio_transforms() -> tuple[torchaudio.transforms.MelSpectrogram, torchaudio.transforms.Spectrogram]:
    """Log-mel front end with the project's audio params, and a magnitude spectrogram."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=AUDIO.sample_rate, n_fft=AUDIO.n_fft, hop_length=AUDIO.hop_length, n_mels=AUDIO.n_mels
    )
    return mel, torchaudio.transforms.Spectrogram(n_fft=AUDIO.n_fft, hop_length=AUDIO.hop_length, power=1)


def audio_features(crop: np.ndarray) -> np.ndarray:
    """Log-mel band means, onset-rate profile (spectral flux) and harmonic ratios of the crop."""
    waveform = torch.from_numpy(crop)
    mel_spectrogram, spectrogram = audio_transforms()
    log_mel = np.log(mel_spectrogram(waveform).numpy() + 1e-6)

    flux = np.maximum(np.diff(log_mel, axis=1), 0).sum(axis=0)
    modulation = np.abs(np.fft.rfft(flux - flux.mean()))
    rates = np.fft.rfftfreq(len(flux), AUDIO.hop_length / AUDIO.sample_rate)
    rate_profile = np.array([modulation[np.abs(rates - rate) < 0.6].sum() for rate in (2, 3, 4, 6, 8, 10)])
    onsets = np.sum((flux[1:-1] > flux[:-2]) & (flux[1:-1] >= flux[2:]) & (flux[1:-1] > 0.3 * flux.max()))

    ratios = harmonic_ratios(spectrogram(waveform).numpy())
    return np.concatenate([log_mel.mean(axis=1), log_shares(rate_profile), [np.log(onsets + 1)], ratios])


def harmonic_ratios(spectrum: np.ndarray) -> np.ndarray:
    """Median log level of the 2nd and 3rd harmonic relative to the strongest partial, over loud frames."""
    loud = spectrum.sum(axis=0) > 0.2 * spectrum.sum(axis=0).max()
    ratios = []
    for frame in spectrum[:, loud].T:
        fundamental = 3 + int(np.argmax(frame[3:]))
        harmonics = [frame[k * fundamental - 2 : k * fundamental + 3].max(initial=0.0) for k in (2, 3)]
        ratios.append(np.log(np.array(harmonics) / frame[fundamental] + 1e-4))
    return np.median(np.array(ratios), axis=0)


@pytest.fixture(scope="module")
def probe_data(sample: tuple[Path, dict], factors: pd.DataFrame) -> dict[str, np.ndarray]:
    root = sample[0]
    pairs = factors[factors["kind"] == "pair"].reset_index(drop=True)
    images = [image_features(root / "artgraph" / "imagesf2" / name) for name in pairs["artwork_id"]]
    crops = [audio_features(audio_crop(track_file(root, track_id))) for track_id in pairs["track_id"]]
    return {"image": np.stack(images), "audio": np.stack(crops)}


def probe_accuracy(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Cross-validated accuracy of a logistic-regression probe, folds grouped (no group in two)."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(probe, features, labels, cv=GroupKFold(n_splits=4), groups=groups).mean())


def terciles(values: pd.Series) -> np.ndarray:
    """A numeric nuisance as three equally filled levels (categorical ones stay as they are)."""
    if not pd.api.types.is_numeric_dtype(values):
        return values.to_numpy()
    return pd.qcut(values.astype(float), 3, labels=False).to_numpy()


# ---- layout -------------------------------------------------------------------------------------
def test_artgraph_export_and_images_follow_the_real_layout(sample: tuple[Path, dict]) -> None:
    root, _ = sample
    artgraph = pd.read_csv(root / "artgraph" / "artgraph.csv", encoding="utf-8", dtype=str)
    assert list(artgraph.columns) == [
        "name", "title", "artist", "style", "genre", "date", "emotion", "tags", "media"
    ]
    assert len(artgraph) == SMALL["n_artworks"] and artgraph["name"].is_unique
    assert artgraph["artist"].nunique() == SMALL["n_artists"]
    assert not artgraph["name"].map(str.isascii).all(), "a few names should be non-ASCII, as in ArtGraph"
    assert set(artgraph["style"]) == set(COMPOSITION_STYLES.values())
    for name in artgraph["name"]:
        with Image.open(root / "artgraph" / "imagesf2" / name) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (SMALL["image_size"],) * 2)


def test_fma_metadata_reads_like_fma(sample: tuple[Path, dict]) -> None:
    root, _ = sample
    lines = (root / "fma" / "fma_metadata" / "tracks.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith(",album,") and lines[1].startswith(",") and lines[2].startswith("track_id,,")
    tracks = read_tracks(root)
    assert tracks.index.name == "track_id" and tracks.index.is_unique
    required = [("album", "title"), ("album", "id"), ("artist", "name"), ("artist", "id"), ("set", "split"),
                ("set", "subset"), ("track", "duration"), ("track", "genre_top"), ("track", "genres"),
                ("track", "genres_all"), ("track", "license"), ("track", "title"), ("track", "bit_rate"),
                ("track", "date_created"), ("track", "listens")]
    assert set(required) <= set(tracks.columns)
    assert len(tracks) == SMALL["n_artworks"] + SMALL["n_extra_tracks"]
    assert (tracks[("track", "duration")] == SMALL["track_seconds"]).all()
    assert tracks[("track", "duration")].dtype.kind == "i"
    assert set(tracks[("set", "subset")]) == {"small", "medium", "large"}
    assert tracks[("track", "license")].nunique() >= 4
    licence_shares = tracks[("track", "license")].value_counts(normalize=True)
    assert licence_shares.iloc[0] > 2 * licence_shares.iloc[-1], "licences should be skewed"
    artists = tracks[("artist", "name")].value_counts()
    assert 3 <= len(artists) < len(tracks) and artists.iloc[0] >= 2 * artists.iloc[-1], "Zipf-like artists"

    genres = pd.read_csv(root / "fma" / "fma_metadata" / "genres.csv")
    assert list(genres.columns) == ["genre_id", "#tracks", "parent", "title", "top_level"]
    by_id = genres.set_index("genre_id")
    for _, track in tracks["track"].iterrows():
        assert isinstance(track["genres"], list) and set(track["genres"]) <= set(track["genres_all"])
        assert set(track["genres_all"]) <= set(by_id.index)
        top_levels = {by_id.loc[genre_id, "top_level"] for genre_id in track["genres_all"]}
        assert [by_id.loc[top, "title"] for top in top_levels] == [track["genre_top"]]
    counted = pd.Series([gid for all_ in tracks[("track", "genres_all")] for gid in all_]).value_counts()
    assert (by_id["#tracks"] == counted.reindex(by_id.index, fill_value=0)).all()


def test_pairs_are_one_to_one_and_every_file_exists(sample: tuple[Path, dict], factors: pd.DataFrame) -> None:
    root, _ = sample
    pairs = pd.read_csv(root / "artsound_pairs.csv", dtype={"artwork_id": str})
    artgraph = pd.read_csv(root / "artgraph" / "artgraph.csv", dtype=str)
    tracks = read_tracks(root)
    assert list(pairs.columns) == ["artwork_id", "track_id"]
    assert len(pairs) == SMALL["n_artworks"] and pairs["artwork_id"].is_unique and pairs["track_id"].is_unique
    assert set(pairs["artwork_id"]) == set(artgraph["name"]) and set(pairs["track_id"]) <= set(tracks.index)
    extra = sorted(set(tracks.index) - set(pairs["track_id"]))
    assert len(extra) == SMALL["n_extra_tracks"]
    folders = {f"{track_id:06d}"[:3] for track_id in tracks.index}
    assert tracks.index.max() > 1000 and len(folders) > 10, "track ids should be scattered, like FMA's"
    for track_id in tracks.index:
        info = sf.info(track_file(root, track_id))
        assert (info.format, info.channels, info.samplerate) == ("MP3", 1, AUDIO.sample_rate)
        assert abs(info.duration - SMALL["track_seconds"]) < 0.1
    peaks = [np.abs(sf.read(track_file(root, tid), dtype="float32")[0]).max() for tid in tracks.index[:20]]
    assert 0.1 < min(peaks) and max(peaks) < 0.7, "peak-normalised, no clipping"

    assert len(factors) == len(tracks)
    paired = factors[factors["kind"] == "pair"]
    assert paired[["artwork_id", "track_id"]].reset_index(drop=True).equals(pairs)
    assert sorted(factors.loc[factors["kind"] == "extra_track", "track_id"]) == extra
    assert factors.loc[factors["kind"] == "extra_track", "artwork_id"].isna().all()


def test_style_and_genre_labels_follow_the_composition_factor(
    sample: tuple[Path, dict], factors: pd.DataFrame
) -> None:
    root, _ = sample
    artgraph = pd.read_csv(root / "artgraph" / "artgraph.csv", dtype=str).set_index("name")
    genre_top = read_tracks(root)[("track", "genre_top")]
    for _, row in factors.iterrows():
        assert genre_top[row["track_id"]] == TIMBRE_GENRE_TOP[COMPOSITION_TIMBRES[row["composition"]]]
        if row["kind"] == "pair":
            assert artgraph.loc[row["artwork_id"], "style"] == COMPOSITION_STYLES[row["composition"]]


# ---- determinism and atomicity ------------------------------------------------------------------
def dataset_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_same_seed_gives_the_same_dataset_and_another_seed_does_not(
    sample: tuple[Path, dict], tmp_path: Path
) -> None:
    root, summary = sample
    again = tmp_path / "again"
    assert make_sample(SampleParams(seed=7, **SMALL), AUDIO, again) == summary
    assert dataset_files(again) == dataset_files(root)
    for relative in dataset_files(root):
        if relative.endswith((".csv", ".md")):
            assert (again / relative).read_bytes() == (root / relative).read_bytes(), relative
        elif relative.endswith(".jpg"):
            with Image.open(again / relative) as new, Image.open(root / relative) as old:
                assert np.array_equal(np.asarray(new), np.asarray(old)), relative
        else:
            assert np.array_equal(sf.read(again / relative)[0], sf.read(root / relative)[0]), relative

    first, second = tmp_path / "seed0", tmp_path / "seed1"
    make_sample(SampleParams(seed=0, **TINY), AUDIO, first)
    make_sample(SampleParams(seed=1, **TINY), AUDIO, second)
    for name in ["factors.csv", "artsound_pairs.csv", "fma/fma_metadata/tracks.csv", "artgraph/artgraph.csv"]:
        assert (first / name).read_bytes() != (second / name).read_bytes(), name


def test_output_directory_is_replaced_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "sample"
    out_dir.mkdir()
    (out_dir / "stale.txt").write_text("from an older run")
    make_sample(SampleParams(**TINY), AUDIO, out_dir)
    assert not (out_dir / "stale.txt").exists() and (out_dir / "factors.csv").is_file()

    before = {name: (out_dir / name).read_bytes() for name in dataset_files(out_dir)}

    def crash(*args: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(sample_module, "readme_text", crash)
    with pytest.raises(RuntimeError):
        make_sample(SampleParams(seed=1, **TINY), AUDIO, out_dir)
    assert {name: (out_dir / name).read_bytes() for name in dataset_files(out_dir)} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sample"], "no temporary left behind"


# ---- the planted correspondence -----------------------------------------------------------------
@pytest.mark.parametrize("factor", list(FACTORS))
def test_each_factor_is_recoverable_from_the_images(
    factor: str, factors: pd.DataFrame, probe_data: dict
) -> None:
    pairs = factors[factors["kind"] == "pair"]
    accuracy = probe_accuracy(probe_data["image"], pairs[factor].to_numpy(), pairs["artist"].to_numpy())
    assert accuracy >= MIN_PROBE_ACCURACY, f"{factor} from images (folds grouped by painter): {accuracy:.2f}"


@pytest.mark.parametrize("factor", list(FACTORS))
def test_each_factor_is_recoverable_from_the_audio_crop(
    factor: str, factors: pd.DataFrame, probe_data: dict
) -> None:
    pairs = factors[factors["kind"] == "pair"]
    accuracy = probe_accuracy(probe_data["audio"], pairs[factor].to_numpy(), pairs["music_artist"].to_numpy())
    assert accuracy >= MIN_PROBE_ACCURACY, f"{factor} from the audio crop: {accuracy:.2f}"


def test_nuisances_carry_no_signal_about_the_other_modality(factors: pd.DataFrame, probe_data: dict) -> None:
    pairs = factors[factors["kind"] == "pair"]
    for features, nuisances, groups in [
        (probe_data["image"], AUDIO_NUISANCES, pairs["artist"]),
        (probe_data["audio"], IMAGE_NUISANCES, pairs["music_artist"]),
    ]:
        for nuisance in nuisances:
            accuracy = probe_accuracy(features, terciles(pairs[nuisance]), groups.to_numpy())
            assert accuracy <= MAX_NUISANCE_ACCURACY, f"{nuisance} from the other modality: {accuracy:.2f}"


def test_nuisances_and_painters_are_independent_of_the_factors(factors: pd.DataFrame) -> None:
    pairs = factors[factors["kind"] == "pair"]
    for factor in FACTORS:
        for nuisance in IMAGE_NUISANCES + AUDIO_NUISANCES + ["artist", "music_artist"]:
            table = pd.crosstab(pairs[factor], terciles(pairs[nuisance]))
            p_value = chi2_contingency(table).pvalue
            assert p_value > MIN_INDEPENDENCE_P, f"{factor} depends on {nuisance} (p={p_value:.1e})"


def test_factors_are_balanced_and_mutually_independent(factors: pd.DataFrame) -> None:
    pairs = factors[factors["kind"] == "pair"]
    for factor, levels in FACTORS.items():
        counts = pairs[factor].value_counts()
        assert set(counts.index) == set(levels) and counts.max() - counts.min() <= 1
    names = list(FACTORS)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            p_value = chi2_contingency(pd.crosstab(pairs[first], pairs[second])).pvalue
            assert p_value > MIN_INDEPENDENCE_P, f"{first} and {second} are not independent (p={p_value:.1e})"
    joint = pairs.groupby(names).size().reindex(pd.MultiIndex.from_product(FACTORS.values()), fill_value=0)
    assert chisquare(joint.to_numpy()).pvalue > MIN_INDEPENDENCE_P
