"""Headless Chromium (Debian's `chromium`, installed by `make test`) for tests of pages we write.

No driver library: Chromium's own command line loads a page, lets it run for a budget of virtual
time (which waits for pending loads) and dumps the resulting DOM or takes a screenshot. A page
reports what it saw by writing JSON into `<pre id="browser-check">`; `page_checks` injects the
test's script into a copy of the page next to it, so the report itself carries no test code.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
]
VIRTUAL_TIME_MS = 20_000
TIMEOUT_SECONDS = 120
CHECK_ELEMENT = re.compile(r'<pre id="browser-check">(.*?)</pre>', re.DOTALL)


def chromium_path() -> Path | None:
    """$CHROMIUM, else `chromium` on PATH, else Debian's /usr/bin/chromium; None when none exists."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def require_chromium() -> Path:
    """The browser; without one the test fails under CI=true and is skipped elsewhere."""
    path = chromium_path()
    if path is None:
        reason = ("headless Chromium not found ($CHROMIUM, PATH, /usr/bin/chromium): "
                  "`make test` installs Debian's package (apt-get install chromium)")
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{reason}; under CI a missing browser is a failure, not a skip")
        pytest.skip(reason)
    return path


def run_chromium(chromium: Path, args: list[str]) -> subprocess.CompletedProcess:
    """One headless Chromium run in a fresh profile; stdout is the page output."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
                                stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise AssertionError(f"chromium failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    return result


def page_checks(chromium: Path, page: Path, script: str, width: int = 1280, height: int = 900) -> dict:
    """Open `page` in a width x height window with `script` appended to its body; return the JSON it wrote."""
    source = page.read_text(encoding="utf-8")
    if "</body>" not in source:
        raise AssertionError(f"{page}: no </body> to put the check script before")
    checked = page.with_name(f"{page.stem}.check{page.suffix}")
    checked.write_text(source.replace("</body>", f"<script>\n{script}\n</script>\n</body>", 1), encoding="utf-8")
    try:
        result = run_chromium(chromium, [f"--virtual-time-budget={VIRTUAL_TIME_MS}", f"--window-size={width},{height}",
                                         "--dump-dom", checked.as_uri()])
    finally:
        checked.unlink()
    found = CHECK_ELEMENT.search(result.stdout)
    if found is None:
        raise AssertionError(f"{page}: the check script wrote no result (did the page finish loading?)\n"
                             f"{result.stderr[-3000:]}")
    return json.loads(html.unescape(found.group(1)))


def screenshot(chromium: Path, page: Path, target: Path, width: int, height: int) -> Path:
    """A PNG of the page's first `width` x `height` CSS pixels, after its loads finished."""
    target.parent.mkdir(parents=True, exist_ok=True)
    run_chromium(chromium, [f"--virtual-time-budget={VIRTUAL_TIME_MS}", f"--window-size={width},{height}",
                            f"--screenshot={target}", page.as_uri()])
    if not target.is_file():
        raise AssertionError(f"chromium wrote no screenshot to {target}")
    return target
