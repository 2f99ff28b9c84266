"""Shared fixtures: a temporary copy of the project as a git repo, for end-to-end runs.

`make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`); each module is a
group of its own (its module fixtures are built once, its tests run in file order) and each worker
runs torch on one thread. The pipeline's `dvc repro` (`pipeline_repo`, ~20 min at one thread) is built
once per session, by the first worker that needs it, while the other waits on a file lock; each worker
then tests its own copy. The groups are handed out in this order: SHARED_GROUP (quick readers of the
pipeline, so one worker starts the build at once), the groups with slow tests, the rest, and last the
other users of `pipeline_repo` and `prefect_api`, which either worker takes once the build is done.

Timeouts (pyproject.toml) catch hangs, not slowness: a test's call gets `timeout` seconds, its
fixtures' setup does not count (`timeout_func_only`); the pipeline's `dvc repro` has its own limit
(PIPELINE_TIMEOUT). A shared fixture that fails says why in full at the first test that needs it and
in one line at every later one, on either worker, without being run again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from art2mus.processes import stop_process_group
from tests.helpers import (
    BIN,
    E2E_PARAMS,
    OUTPUT_TAIL,
    SERVER_TIMEOUT,
    TESTS,
    answers,
    copy_project,
    free_port,
    kill_group,
    project_env,
)

# Seconds the pipeline fixture's `dvc repro` may run: ~10-12 min alone on a quiet 2-core machine, ~30-35 min
# beside the other worker's full-size rehearsal (the tiny prior then gets one core); this catches a hang,
# not that. The variable overrides it (a slower machine).
PIPELINE_TIMEOUT = int(os.environ.get("ART2MUS_TEST_PIPELINE_TIMEOUT", "4800"))

# The session fixtures that are costly to set up. SHARED_GROUP holds the quick readers of the pipeline and
# runs first; the other modules that use these fixtures run last (LATE_RANK).
SHARED_FIXTURES = ("pipeline_repo", "prefect_api")
SHARED_GROUP = "pipeline"
LATE_RANK = 3
# The longest of those, handed out first so that neither worker ends alone on one (CI, seconds: 470, 270).
LONGEST_LATE_GROUPS = ("e2e/test_retrain_flow", "e2e/test_lineage_audit")
# One thread per worker: two workers share the 2-core CI machine. The stage subprocesses a worker starts
# inherit OMP_NUM_THREADS=1, which their `threads: auto` params follow.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# The most a worker's temporary folder may hold after a module (MiB): the session fixtures' copies (~0.3 GiB)
# and nothing else, unless a test failed. The CI machine's disk is shared and has been seen with little free: a
# suite that kept every project copy and the rehearsal's full-size checkpoints (~11 GiB) filled it.
DISK_BUDGET_MIB = int(os.environ.get("ART2MUS_TEST_DISK_BUDGET_MIB", "2048"))
FAILED_MODULES = pytest.StashKey[set[Path]]()


def xdist_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def one_torch_thread() -> None:
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    if xdist_worker():
        os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
        one_torch_thread()


def pytest_runtest_setup(item: pytest.Item) -> None:
    # An in-process run that set its own threads (training from params) does not carry them over.
    if xdist_worker() and "torch" in sys.modules:
        one_torch_thread()


def xdist_groups(item: pytest.Item) -> set[str]:
    return {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")}


def group_name(item: pytest.Item) -> str:
    """The group pytest-xdist schedules `item` in (its groups joined, as pytest-xdist joins them)."""
    return "_".join(sorted(xdist_groups(item)))


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Each module is a group of its own unless marked; the groups are ordered for the scheduler."""
    for item in items:
        if not xdist_groups(item):
            module = item.path.relative_to(TESTS) if item.path.is_relative_to(TESTS) else item.path
            item.add_marker(pytest.mark.xdist_group(module.with_suffix("").as_posix()))
    yield  # pytest-xdist's own hook (a worker under --dist loadgroup) appends "@<group>" to each node id
    if getattr(config.option, "loadgroup", False):
        for item in items:
            group_node_id(item)
        # Under --no-loadscope-reorder (make test) the scheduler hands the groups out in this order (each
        # group in file order): the pipeline's builder first, slow groups before quick ones so that quick
        # groups fill the end, and the other pipeline users last, when the build is done.
        rank = {group_name(item): 1 for item in items if item.get_closest_marker("slow")}
        rank |= {group_name(item): LATE_RANK for item in items
                 if set(SHARED_FIXTURES) & set(getattr(item, "fixturenames", ()))}
        rank[SHARED_GROUP] = 0
        longest_first = {group: position for position, group in enumerate(LONGEST_LATE_GROUPS)}
        items.sort(key=lambda item: (rank.get(group_name(item), 2),
                                     longest_first.get(group_name(item), len(LONGEST_LATE_GROUPS))))


def group_node_id(item: pytest.Item) -> None:
    """The "@<group>" suffix that tells pytest-xdist's loadgroup scheduler an item's group, where pytest-xdist
    3.8 could not add it: it writes `item._nodeid`, which pytest 9.2 no longer reads (its node ids are
    structured, `item._id`), and then every test is scheduled alone (pytest-dev/pytest-xdist#1386).
    A no-op once pytest-xdist adds the suffix itself."""
    suffix = "@" + group_name(item)
    node_id = getattr(item, "_id", None)
    if not item.nodeid.endswith(suffix) and hasattr(node_id, "parse"):
        item._id = node_id.parse(item.nodeid + suffix)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """On the controller: stop before any test runs if the groups did not reach the scheduler."""
    if node.config.option.dist == "loadgroup" and ids and not all("@" in nodeid for nodeid in ids):
        pytest.exit(f"pytest-xdist (--dist loadgroup) got no xdist_group for {ids[0]} and would schedule every "
                    "test alone, building the shared fixtures on every worker; run with -n 0 (make test "
                    "TEST_WORKERS=0) or with a pytest and pytest-xdist that group (tests/conftest.py)", returncode=4)


class SharedFixtureFailed(pytest.fail.Exception):
    """A shared session fixture failed. pytest keeps this one exception and raises it again for every
    test that needs the fixture (the fixture is not run again); after the first test's report it
    shrinks to one line that points there."""

    def __init__(self, fixture: str, summary: str, detail: str) -> None:
        super().__init__(f"{fixture} failed: {summary}\n{detail}".rstrip(), pytrace=False)
        self.fixture, self.summary, self.detail, self.first_test = fixture, summary, detail, None

    def reported(self, nodeid: str) -> None:
        if self.first_test is None:
            self.first_test = nodeid
            self.msg = (f"{self.fixture} fixture failed earlier: {self.summary}; "
                        f"see the first error (at the setup of {nodeid})")


@contextmanager
def shared_fixture(name: str) -> Iterator[None]:
    """Turn any failure in a shared fixture's body into a SharedFixtureFailed."""
    try:
        yield
    except SharedFixtureFailed:
        raise
    except (Exception, pytest.fail.Exception) as error:
        lines = str(error).strip().splitlines()
        summary = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        raise SharedFixtureFailed(name, summary, traceback.format_exc()[-OUTPUT_TAIL:]) from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if call.excinfo is not None and isinstance(call.excinfo.value, SharedFixtureFailed):
        call.excinfo.value.reported(item.nodeid)
    if report.failed:
        item.config.stash.setdefault(FAILED_MODULES, set()).add(item.path)
    return report


def folder_mib(folder: Path) -> float:
    """What the files below `folder` take (links not followed)."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except FileNotFoundError:  # removed meanwhile
                pass
    return total / 2**20


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for one module's fixtures (project copies, checkpoints), removed when the module ends unless one
    of its tests failed; pytest treats each test's `tmp_path` the same way (tmp_path_retention_policy)."""
    folder = tmp_path_factory.mktemp(request.path.stem)
    yield folder
    if request.path not in request.config.stash.get(FAILED_MODULES, set()):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def temporary_space_given_back(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After each module the worker's temporary folder holds at most DISK_BUDGET_MIB (while no test failed:
    a failed test keeps its folders to be read)."""
    yield
    if request.config.stash.get(FAILED_MODULES, set()):
        return
    base = tmp_path_factory.getbasetemp()
    held = folder_mib(base)
    if held > DISK_BUDGET_MIB:
        largest = sorted(((folder_mib(item), item.name) for item in base.iterdir()
                         if item.is_dir() and not item.is_symlink()), reverse=True)
        listed = ", ".join(f"{name} {mib:,.0f} MiB" for mib, name in largest[:5])
        pytest.fail(f"after {request.path.name} the tests keep {held:,.0f} MiB in {base}, over the "
                    f"{DISK_BUDGET_MIB:,} MiB budget (ART2MUS_TEST_DISK_BUDGET_MIB): a module fixture's folder "
                    f"belongs in `module_tmp`; largest: {listed}", pytrace=False)


def repro(root: Path, log: Path, timeout: float) -> None:
    """`dvc repro` in `root`, its output in `log`; a failure or timeout names the log and shows its end."""
    started = time.monotonic()
    with open(log, "wb") as output:
        process = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=root, env=project_env(root), stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        process.wait()
        outcome = f"`dvc repro` did not finish within {timeout:.0f} s (ART2MUS_TEST_PIPELINE_TIMEOUT) and was killed"
    except BaseException:
        kill_group(process)
        raise
    else:
        if code == 0:
            return
        outcome = f"`dvc repro` exited with {code} after {time.monotonic() - started:.0f} s"
    tail = log.read_text(errors="replace")[-OUTPUT_TAIL:]
    raise SharedFixtureFailed("pipeline_repo", outcome, f"its output, in {log}, ends:\n{tail}")


def session_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test session's temporary folder, shared by its xdist workers (each has its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if xdist_worker() else base


def built_pipeline(shared: Path) -> Path:
    """The project on which `dvc repro` ran, built once per test session: the first worker to get here
    builds it under a file lock, a later one reuses it, or raises the builder's failure again."""
    from filelock import FileLock

    built, done, failed = shared / "pipeline" / "project", shared / "pipeline" / "done", shared / "pipeline" / "failed.json"
    built.mkdir(parents=True, exist_ok=True)
    with FileLock(shared / "pipeline" / "build.lock"):
        if failed.is_file():
            record = json.loads(failed.read_text())
            raise SharedFixtureFailed("pipeline_repo", record["summary"],
                                      f"(built on {record['worker']}) {record['detail']}")
        if not done.is_file():  # the first, or a builder that died without a word: build (again)
            shutil.rmtree(built)
            try:
                copy_project(built, E2E_PARAMS)
                repro(built, shared / "pipeline" / "dvc-repro.log", PIPELINE_TIMEOUT)
            except SharedFixtureFailed as error:
                failed.write_text(json.dumps({"summary": error.summary, "detail": error.detail,
                                              "worker": os.environ.get("PYTEST_XDIST_WORKER", "the controller")}))
                raise
            done.touch()
    return built


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This worker's copy of a project on which the whole pipeline has run once with `dvc repro` (built once
    per session, see built_pipeline); e2e tests may change it, or copy it to keep it as it is."""
    with shared_fixture("pipeline_repo"):
        built = built_pipeline(session_temp(tmp_path_factory))
        root = tmp_path_factory.mktemp("project")
        shutil.copytree(built, root, symlinks=True, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server on 127.0.0.1 shared by every retrain of the session (its home in a temp dir)."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    env = {**project_env(home), "PREFECT_HOME": str(home)}
    log = home / "server.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services",
             "--no-ui", "--analytics-off"],
            cwd=home, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + SERVER_TIMEOUT
    try:
        with shared_fixture("prefect_api"):
            while not answers(f"{api}/health"):
                assert server.poll() is None, f"the Prefect server exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"the Prefect server did not answer:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
        yield api
    finally:
        stop_process_group(server, grace=60)
