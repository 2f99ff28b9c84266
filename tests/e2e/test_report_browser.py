"""The HTML evaluation report in a real headless Chromium: images, players, spectrograms, table."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from art2mus.evaluation.report import write_report
from tests import browser
from tests.browser import page_checks, require_chromium, screenshot
from tests.report_items import HOSTILE_ID, HOSTILE_MODEL, HOSTILE_TITLE, REPORT_META, make_report_items, metric_table

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / "test-artifacts" / "report.png"  # gitignored; CI logs print where it is
N_ITEMS = 4
WIDTH = 1280  # CSS pixels of the window, for the checks and the screenshot alike

# Runs at the end of the page: waits for every image and player, then writes what it found.
CHECK_SCRIPT = """
(async () => {
  const settled = (element, ready, events) => ready(element) ? Promise.resolve() :
    new Promise(resolve => events.forEach(name => element.addEventListener(name, resolve, {once: true})));
  await new Promise(resolve => window.addEventListener("load", resolve, {once: true}));
  const images = [...document.images];
  const players = [...document.querySelectorAll("audio")];
  await Promise.all(images.map(image => settled(image, i => i.complete, ["load", "error"])));
  await Promise.all(players.map(audio =>
    settled(audio, a => a.readyState >= 1 || a.error !== null, ["loadedmetadata", "error"])));
  const table = document.querySelector("table.metrics");
  const result = {
    images: images.map(i => ({kind: i.className, src: i.getAttribute("src"), width: i.naturalWidth,
                              shown: i.getBoundingClientRect().width})),
    players: players.map(a => ({kind: a.className, src: a.getAttribute("src"), readyState: a.readyState,
                                duration: a.duration, error: a.error && a.error.code,
                                shown: a.getBoundingClientRect().width})),
    table: table && {shown: table.getBoundingClientRect().height,
                     header: [...table.tHead.rows[0].cells].map(c => c.textContent.trim()),
                     rows: [...table.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent.trim()))},
    title: document.title,
    headers: [...document.querySelectorAll(".artwork header")].map(h => h.textContent),
    meta: [...document.querySelectorAll("table.meta tr")].map(r => r.textContent),
    scripts: document.scripts.length,
    pwned: window.__pwned === true,
    height: document.documentElement.scrollHeight,
  };
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
})();
"""


@pytest.mark.slow
def test_report_shows_images_players_and_spectrograms(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    chromium = require_chromium()
    items = make_report_items(tmp_path / "inputs", N_ITEMS)
    index = write_report(tmp_path / "report", items, metric_table(), "Evaluation <test split>", REPORT_META)

    seen = page_checks(chromium, index, CHECK_SCRIPT, width=WIDTH)

    artworks = [image for image in seen["images"] if image["kind"] == "artwork-image"]
    mels = [image for image in seen["images"] if image["kind"] == "mel"]
    assert len(artworks) == N_ITEMS and len(mels) == 2 * N_ITEMS, seen["images"]
    for image in seen["images"]:
        assert image["width"] > 0 and image["shown"] > 0, f"image did not load or is hidden: {image}"
    for kind, seconds in (("generated", 2.56), ("reference", 2.56)):
        players = [player for player in seen["players"] if player["kind"] == kind]
        assert len(players) == N_ITEMS, seen["players"]
        for player in players:
            assert player["error"] is None and player["readyState"] >= 1, f"player cannot load: {player}"
            assert player["duration"] == pytest.approx(seconds, abs=0.01) and player["shown"] > 0, player

    table = seen["table"]
    assert table is not None and table["shown"] > 0
    assert table["header"] == ["model", "top1_accuracy", "fad"]
    assert table["rows"][0][:2] == ["aligner", "0.4375 [0.25, 0.625]"]
    assert table["rows"][1] == [HOSTILE_MODEL, "0.125 [0, 0.25]", "invalidneeds at least 2 clips <per set>"]

    # Hostile titles and ids arrive as text: nothing ran, nothing was injected.
    assert not seen["pwned"] and seen["scripts"] == 1
    assert seen["title"] == "Evaluation <test split>"
    assert any(HOSTILE_TITLE in header and HOSTILE_ID in header for header in seen["headers"])
    assert any("models:/art2mus/3" in row for row in seen["meta"])

    shot = screenshot(chromium, index, tmp_path / "report.png", width=WIDTH, height=min(seen["height"], 4000))
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    with capsys.disabled():
        print(f"\nreport screenshot: {shot} (copy: {ARTIFACT})")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[1] == WIDTH and pixels.shape[0] >= 1000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000, "screenshot looks blank"


def test_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "chromium_path", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI a missing browser is a failure"):
        require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        require_chromium()
