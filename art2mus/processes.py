"""Ending a command started in its own session, with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen, grace: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Send `sig` (SIGTERM) to the process group of `process` (started with `start_new_session=True`),
    SIGKILL it after `grace` seconds; a no-op when it has already ended."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
