"""write_report: escaped text, index-named assets, 16 kHz crops, invalid metrics, atomic on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from art2mus.config import AudioParams
from art2mus.errors import Art2MusError
from art2mus.evaluation.report import metric_cell, write_report
from tests.report_items import HOSTILE_ID, HOSTILE_MODEL, HOSTILE_TITLE, REPORT_META, make_report_items, metric_table


@pytest.fixture()
def items(tmp_path: Path) -> list:
    return make_report_items(tmp_path / "inputs", 2)


def test_report_escapes_every_text_and_names_assets_by_index(tmp_path: Path, items: list) -> None:
    meta = {**REPORT_META, "<i>key</i>": "<script>alert(1)</script>"}
    index = write_report(tmp_path / "report", items, metric_table(), "<title>x</title>", meta)

    source = index.read_text(encoding="utf-8")
    for hostile in (HOSTILE_TITLE, HOSTILE_ID, HOSTILE_MODEL, "<script>alert(1)</script>", "<i>key</i>"):
        assert hostile not in source
    assert "<script" not in source and "<img src=x" not in source
    assert "&lt;script&gt;window.__pwned = true&lt;/script&gt;Sunset &amp; &#34;Sea&#34;" in source
    assets = sorted(path.name for path in (tmp_path / "report" / "assets").iterdir())
    assert assets == sorted(f"{i:03d}-{kind}" for i in (1, 2) for kind in (
        "image.jpg", "generated.wav", "reference.wav", "generated-mel.png", "reference-mel.png"))


def test_report_audio_is_16khz_mono_and_the_reference_is_the_crop(tmp_path: Path, items: list) -> None:
    audio = AudioParams()
    write_report(tmp_path / "report", items, metric_table(), "t", REPORT_META, audio)

    reference = sf.info(str(tmp_path / "report" / "assets" / "001-reference.wav"))
    generated = sf.info(str(tmp_path / "report" / "assets" / "001-generated.wav"))
    assert (reference.samplerate, reference.channels, reference.frames) == (16000, 1, audio.crop_samples)
    assert (generated.samplerate, generated.channels, generated.frames) == (16000, 1, sf.info(str(items[0].generated)).frames)
    wave, _ = sf.read(str(tmp_path / "report" / "assets" / "001-reference.wav"))
    assert abs(wave).max() == pytest.approx(0.5, abs=1e-3)  # peak-normalised as the model's crops are


def test_metric_cells_show_value_interval_or_invalid_reason() -> None:
    assert metric_cell({"value": 0.123456, "low": 0.1, "high": 0.15}).value == "0.1235"
    assert metric_cell({"value": 0.5, "low": 0.25, "high": None}).interval == "[0.25, —]"
    invalid = metric_cell({"value": 3.0, "low": 1.0, "high": 4.0, "valid": False, "note": "one clip"})
    assert (invalid.valid, invalid.note) == (False, "one clip")
    assert metric_cell({"value": float("nan"), "low": 0, "high": 1, "valid": False}).note == "no reason given"
    assert metric_cell(None) is None


def test_table_marks_invalid_results_and_missing_metrics(tmp_path: Path, items: list) -> None:
    table = metric_table()
    table[0].metrics["only_here"] = {"value": 1, "low": 1, "high": 1}
    source = write_report(tmp_path / "report", items, table, "t", REPORT_META).read_text(encoding="utf-8")

    assert '<td class="invalid">invalid<span class="note">needs at least 2 clips &lt;per set&gt;</span></td>' in source
    assert "<th>only_here</th>" in source and "<td>&mdash;</td>" in source


@pytest.mark.parametrize("broken", ["image", "generated", "reference"])
def test_bad_input_names_the_file_and_keeps_the_previous_report(tmp_path: Path, items: list, broken: str) -> None:
    out = tmp_path / "report"
    index = write_report(out, items, metric_table(), "first", REPORT_META)
    before = index.read_text(encoding="utf-8")
    bad = Path(getattr(items[1], broken))
    bad.write_bytes(b"not a media file")

    with pytest.raises(Art2MusError, match=str(bad)):
        write_report(out, items, metric_table(), "second", REPORT_META)
    assert index.read_text(encoding="utf-8") == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["inputs", "report"]


def test_an_absent_baseline_is_shown_absent_with_its_reason_not_invalid(tmp_path: Path, items: list) -> None:
    """The caption baseline the evaluation could not run is absent (as metrics.json says), not a failed metric."""
    from art2mus.evaluation.evaluate import metric_cell as result_cell
    from art2mus.evaluation.report import MetricRow

    absent = result_cell(None, "absent: no captioner <for this profile>")  # as comparison_table builds it
    cell = metric_cell(absent)
    assert (cell.absent, cell.valid, cell.note) == (True, False, "no captioner <for this profile>")
    table = [*metric_table(), MetricRow("caption baseline", {"fad_spectral": absent})]
    source = write_report(tmp_path / "report", items, table, "t", REPORT_META).read_text(encoding="utf-8")
    row = source[source.index("<th>caption baseline</th>"):]
    row = row[:row.index("</tr>")]
    assert '<td class="absent">absent<span class="note">no captioner &lt;for this profile&gt;</span></td>' in row
    assert "invalid" not in row
    assert '<td class="invalid">invalid<span class="note">needs at least 2 clips' in source  # invalid stays invalid
