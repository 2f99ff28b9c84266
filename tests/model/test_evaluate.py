"""The evaluation of one model: correspondence, generated-set metrics, planted factors and its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from art2mus.config import AudioParams, Params, SampleParams
from art2mus.data.sample import fma_track_path, make_sample
from art2mus.errors import Art2MusError
from art2mus.evaluation.evaluate import (
    GENERATED_DIR,
    METRICS_FILE,
    PER_ITEM_FILE,
    PLOTS_DIR,
    REPORT_DIR,
    PlantedFactors,
    SplitData,
    decision_scores,
    encode_latents,
    evaluate_model,
    reference_crops,
    references_vocoded,
)
from art2mus.evaluation.planted import MUSIC_FACTORS, vocoded
from art2mus.models.pipeline import Art2MusPipeline, trimmed
from tests.tiny_model import build_tiny_model

EVALUATE = {"k": 4, "draws": 2, "untrained_seeds": [1], "steps": 3, "fad_resamples": 10, "report_items": 2,
            "batch_size": 8, "t_range": (300, 900), "planted_tracks": 24}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    make_sample(SampleParams(n_artworks=40, n_artists=8, n_extra_tracks=0, image_size=64), AudioParams(), root)
    return root


def split_of(root: Path, rows: slice) -> SplitData:
    artworks = pd.read_csv(root / "artgraph/artgraph.csv").set_index("name")
    pairs = pd.read_csv(root / "artsound_pairs.csv").iloc[rows].reset_index(drop=True)
    pairs["artist"] = artworks.loc[pairs["artwork_id"], "artist"].to_numpy()
    pairs["title"] = artworks.loc[pairs["artwork_id"], "title"].to_numpy()
    return SplitData(pairs, [root / "artgraph/imagesf2" / name for name in pairs["artwork_id"]],
                     [root / "fma" / fma_track_path(int(track)) for track in pairs["track_id"]])


@pytest.fixture(scope="module")
def evaluated(sample: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("evaluation") / "evaluate"
    pipeline = Art2MusPipeline.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("model")))
    levels = pd.read_csv(sample / "factors.csv").set_index("track_id")[list(MUSIC_FACTORS)]
    params = Params(evaluate=EVALUATE)
    evaluation = evaluate_model(pipeline, split_of(sample, slice(0, 10)), params, out,
                                PlantedFactors(levels, split_of(sample, slice(10, 40))), meta={"model": "tiny"})
    return evaluation, out


def test_every_conditioning_is_scored(evaluated) -> None:
    evaluation, _ = evaluated
    metrics = evaluation.metrics
    assert set(metrics["correspondence"]) == {"trained", "mean", "untrained", "oracle"}
    assert set(metrics["generation"]) == {"trained", "mean", "untrained", "oracle", "references_vocoded"}
    assert "generation_absent" not in metrics  # the tiny prior has an audio encoder: the oracle generates
    for result in metrics["correspondence"].values():
        top1 = result["retrieval_top1"]
        assert 0 <= top1["low"] <= top1["value"] <= top1["high"] <= 1
        assert result["chance_top1"] == pytest.approx(1 / 4)
    # Mean conditioning gives every candidate the same tokens, hence one LOA and one UNet pass per draw:
    # the errors tie exactly, so retrieval is exactly chance and the gap 0.
    mean = metrics["correspondence"]["mean"]
    assert mean["retrieval_top1"]["low"] == mean["retrieval_top1"]["high"] == 1 / 4
    assert mean["gap"]["value"] == pytest.approx(0.0, abs=1e-6)  # float32 means of equal errors


def test_generated_sets_carry_fad_scores_and_planted_factors(evaluated) -> None:
    evaluation, _ = evaluated
    trained = evaluation.metrics["generation"]["trained"]
    fad = trained["fad_spectral"]
    assert fad["name"] == "fad_spectral" and fad["value"] > 0 and fad["dim"] == 128
    assert fad["valid"] is False and "too few" in fad["reason"]  # 10 clips are too few rows for 128 dims
    assert trained["imagebind_score"]["am"] is None and "shared" in trained["imagebind_score"]["am_absent"]
    assert -1 <= trained["imagebind_score"]["mm"]["value"] <= 1
    assert trained["kl"]["status"] == "absent" and "tagger" in trained["kl"]["reason"]
    assert trained["peak_max"] <= 0.99 + 1e-6 and trained["rms_min"] > 0
    assert set(trained["planted"]) == set(MUSIC_FACTORS)
    for score in trained["planted"].values():
        assert 0 <= score["accuracy"]["value"] <= 1 and 0 < score["chance"] < 1


def test_outputs_are_written_together(evaluated) -> None:
    evaluation, out = evaluated
    assert json.loads((out / METRICS_FILE).read_text()) == json.loads(json.dumps(evaluation.metrics))
    per_item = pd.read_parquet(out / PER_ITEM_FILE)
    assert list(per_item.columns[:2]) == ["artwork_id", "track_id"] and len(per_item) == 10
    assert np.allclose(per_item["retrieval_top1"].mean(),
                       evaluation.metrics["correspondence"]["trained"]["retrieval_top1"]["value"])
    wavs = sorted((out / GENERATED_DIR).glob("*.wav"))
    assert len(wavs) == 10
    info = sf.info(wavs[0])
    assert info.samplerate == 16000 and info.frames == round(2.56 * 16000)
    index = pd.read_csv(out / GENERATED_DIR / "index.csv")
    assert index["wav"].tolist() == [path.name for path in wavs]
    assert (out / REPORT_DIR / "index.html").is_file()
    assert {path.name for path in (out / PLOTS_DIR).iterdir()} == {"correspondence.csv", "fad.csv"}
    assert not [path for path in out.parent.iterdir() if path.name.startswith(".")]  # no temporaries left


def test_too_small_a_split_is_refused(sample: Path, tmp_path: Path) -> None:
    pipeline = Art2MusPipeline.from_pretrained(build_tiny_model(tmp_path))
    with pytest.raises(Art2MusError, match="need at least k=4"):
        evaluate_model(pipeline, split_of(sample, slice(0, 3)), Params(evaluate=EVALUATE), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_decision_scores_equal_the_full_evaluation(sample: Path, evaluated, tmp_path: Path) -> None:
    evaluation, _ = evaluated
    pipeline = Art2MusPipeline.from_pretrained(build_tiny_model(tmp_path))
    scores = decision_scores(pipeline, split_of(sample, slice(0, 10)), Params(evaluate=EVALUATE))
    pd.testing.assert_frame_equal(scores, evaluation.per_item)


def test_the_oracle_and_the_fad_floor_are_rows_like_the_model(evaluated) -> None:
    evaluation, out = evaluated
    generation = evaluation.metrics["generation"]
    for name in ("oracle", "references_vocoded"):
        assert generation[name]["fad_spectral"]["value"] > 0
        assert set(generation[name]["planted"]) == set(MUSIC_FACTORS)
        assert -1 <= generation[name]["imagebind_score"]["mm"]["value"] <= 1
    rows = {row.model: row.metrics for row in evaluation.table}
    assert {"retrieval_top1", "fad_spectral", "planted_register"} <= set(rows["oracle"])  # one row, both halves
    assert "retrieval_top1" not in rows["references_vocoded"] and "planted_timbre" in rows["references_vocoded"]
    # The floor is the references themselves, so it sits far below clips generated from an image.
    assert generation["references_vocoded"]["fad_spectral"]["value"] < generation["mean"]["fad_spectral"]["value"]
    html = (out / REPORT_DIR / "index.html").read_text()
    assert "references_vocoded" in html and "oracle" in html


def test_the_fad_floor_is_the_references_through_codec_and_vocoder(sample: Path, tmp_path: Path) -> None:
    pipeline = Art2MusPipeline.from_pretrained(build_tiny_model(tmp_path))
    data = split_of(sample, slice(0, 3))
    references = reference_crops(data.track_paths, AudioParams())
    latents = encode_latents(pipeline, references, AudioParams())
    floor = references_vocoded(pipeline, latents, len(references[0]))
    assert [len(wave) for wave in floor] == [len(wave) for wave in references]
    assert all(wave.dtype == np.float32 and np.abs(wave).max() <= 0.99 + 1e-6 for wave in floor)
    # The same music the planted-factor estimator renders from the waveforms (log-mel, codec round trip, vocoder).
    (rendered,) = vocoded(references, pipeline.backbone, AudioParams())
    np.testing.assert_allclose(np.stack(floor), np.stack(trimmed(rendered, len(references[0]))), atol=1e-5)


def test_without_an_audio_encoder_the_oracle_row_is_absent_with_its_reason(sample: Path, tmp_path: Path) -> None:
    pipeline = Art2MusPipeline.from_pretrained(build_tiny_model(tmp_path))
    pipeline.backbone.audio_encoder = None  # as the real AudioLDM2 prior: no track -> conditioning encoder
    params = Params(evaluate={**EVALUATE, "planted_tracks": 0, "generate": ["trained", "oracle"]})
    evaluation = evaluate_model(pipeline, split_of(sample, slice(0, 6)), params, tmp_path / "out")
    assert set(evaluation.metrics["generation"]) == {"trained"}
    assert "no audio encoder" in evaluation.metrics["generation_absent"]["oracle"]
    row = next(row for row in evaluation.table if row.model == "oracle")
    assert row.metrics["fad_spectral"]["value"] is None and row.metrics["fad_spectral"]["note"].startswith("absent")
    assert "no audio encoder" in (tmp_path / "out" / REPORT_DIR / "index.html").read_text()
