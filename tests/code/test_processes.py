"""Stopping a command with everything it started."""

from __future__ import annotations

import subprocess
import sys
import time

from art2mus.processes import stop_process_group

# A leader that ignores SIGTERM (only the SIGKILL after the grace ends it), with a child that does not.
STUBBORN = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "print(1, flush=True); time.sleep(600)")


def group_alive(pid: int) -> bool:
    return subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode == 0


def test_the_whole_group_ends_and_a_stubborn_leader_is_killed_after_the_grace() -> None:
    process = subprocess.Popen([sys.executable, "-c", STUBBORN], start_new_session=True, stdout=subprocess.PIPE)
    assert process.stdout.readline().strip() == b"1"
    started = time.monotonic()
    stop_process_group(process, grace=1)
    assert process.returncode == -9 and 1 <= time.monotonic() - started < 30
    deadline = time.monotonic() + 10
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(process.pid)
    stop_process_group(process)  # already ended: a no-op
