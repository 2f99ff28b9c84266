"""The retrain flow end to end: `art2mus retrain` processes on copies of the pipeline fixture, one
session-scoped Prefect server (PREFECT_HOME in a temp dir), real MLflow SQLite stores, real DVC.

Every copy starts where the shared fixture's `dvc repro` left off, so DVC skips what is done; the
only training is one aligner-only variation (a few steps on the shared prior: `train` and
`evaluate` re-run). Scenarios:

- copy A: first run (no champion: floors only) -> version 1 champion; a rerun with nothing changed
  registers nothing; the weak variation -> version 2, not promoted; rerun, its verdict holds.
- a second registry B (a team's shared store, two checkouts): A's weak model first (floors lowered)
  -> champion; a fresh copy D with the default model -> wins; rollback and history; then a failed
  gate on D fails the flow, publishes the GX summary as a Prefect artifact and registers nothing.
- copy C: two retrains at once end with one version and one champion; a held project lock makes a
  third refuse clearly; `art2mus schedule` serves a cron deployment.

The first tests are fast: the flow's own logic on crafted inputs (DVC's output, remotes, verdicts).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from prefect.logging import disable_run_logger

from art2mus.config import Params
from art2mus.errors import Art2MusError
from art2mus.orchestration.dvc_runner import parse_repro
from art2mus.orchestration.retries import TransientFailure, is_transient
from art2mus.processes import stop_process_group
from art2mus.quality import GateFailed, GateReport
from art2mus.tracking.registry import MODEL_NAME
from art2mus.tracking.verdict import decision_key, previous_verdict
from flows.retrain import enforce_gates, sync_data
from tests.helpers import BIN, E2E_PARAMS, QUICK_EVALUATE, SERVER_TIMEOUT, free_port, project_env, set_params

slow = pytest.mark.slow
FIXTURE_STEPS = E2E_PARAMS["train"]["steps"]  # the pipeline fixture's aligner steps, which WEAK changes
# An aligner that barely trained, evaluated on the first 32 test items (the champion is scored on the same
# ones), so the one re-run of `evaluate` stays short.
WEAK = {"train": {"steps": 10, "warmup_steps": 2, "checkpoint_every": 10}, "evaluate": QUICK_EVALUATE}
LOWERED_FLOORS = {"promotion": {"floors": {"retrieval_top1": 0.0}}}
RETRAIN_TIMEOUT = 1200  # seconds: the weak variation re-runs train and evaluate


def test_dvc_output_tells_which_stages_ran_and_which_failed() -> None:
    output = ["Stage 'sample' didn't change, skipping", "Running stage 'train':", "> python -m stages.train",
              "Stage 'evaluate' is cached - skipping run, checking out outputs", "Running stage 'validate_raw':",
              "ERROR: failed to reproduce 'validate_raw': failed to run: python -m stages.validate_raw, exited with 1"]
    assert parse_repro(output) == (["train", "validate_raw"], ["sample", "evaluate"], "validate_raw")
    assert parse_repro(["Data and pipelines are up to date."]) == ([], [], None)


def test_the_gate_summary_is_the_one_in_the_gates_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = GateReport("validate_raw", False, "validate_raw: FAILED 1 of 51 expectations\n"
                         "  artworks  expect at least 1000 artworks: observed 96",
                         {"gate": "validate_raw", "success": False, "suites": {},
                          "statistics": {"evaluated_expectations": 51, "successful_expectations": 50,
                                         "unsuccessful_expectations": 1}})
    failing.write(tmp_path / "data/reports/validate_raw.json")  # as the stage writes it, summary included
    artifacts: list[str] = []
    monkeypatch.setattr("flows.retrain.create_markdown_artifact", lambda markdown, **_: artifacts.append(markdown))
    with pytest.raises(GateFailed) as raised:
        enforce_gates.fn(tmp_path, "validate_raw")
    assert str(raised.value) == ("quality gate validate_raw failed; nothing was registered\n"
                                 f"validate_raw: FAILED 1 of 51 expectations (full results: {tmp_path}/data/reports/"
                                 "validate_raw.json)\n  artworks  expect at least 1000 artworks: observed 96")
    assert failing.summary in artifacts[0] and "Full GX results: `data/reports/validate_raw.json`" in artifacts[0]
    # A gate stage that stopped before its verdict (DVC removed its old report first) leaves the failure to the caller.
    assert enforce_gates.fn(tmp_path, "validate_splits") == []


def test_only_unreachable_or_busy_services_are_retried() -> None:
    assert is_transient(TransientFailure("dvc pull failed")) and is_transient(ConnectionRefusedError())
    assert is_transient(MlflowException("database is locked"))
    assert not is_transient(Art2MusError("quality gate validate_raw failed"))
    assert not is_transient(MlflowException("no such version", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(KeyError("weights_sha256"))


def dvc_project(root: Path, config: str) -> Path:
    (root / ".dvc").mkdir(parents=True)
    (root / ".dvc" / "config").write_text(config)
    return root


def test_sync_pulls_only_from_a_remote_service_that_answers(tmp_path: Path) -> None:
    closed_port = free_port()  # bound, released: nothing listens there
    with disable_run_logger():
        local = sync_data.fn(dvc_project(tmp_path / "local", "[core]\n    remote = local\n"
                                         "['remote \"local\"']\n    url = ../.dvcstore\n"))
        unreachable = sync_data.fn(dvc_project(tmp_path / "s3", "[core]\n    remote = team\n"
                                               "['remote \"team\"']\n    url = s3://bucket/art2mus\n"
                                               f"    endpointurl = http://127.0.0.1:{closed_port}\n"))
        none = sync_data.fn(dvc_project(tmp_path / "none", "[core]\n    analytics = false\n"))
    assert "the default DVC remote 'local' is a local folder" in local and "nothing to pull" in local
    assert f"is unreachable at 127.0.0.1:{closed_port}" in unreachable and "from the local cache" in unreachable
    assert none == "no default DVC remote: nothing to pull"


def test_a_verdict_holds_until_its_inputs_change_and_a_replaced_champion_is_never_repromoted() -> None:
    params = Params()
    decided = SimpleNamespace(version=2, tags={"validation_status": "failed", "decision.key": decision_key("1", params)})
    assert previous_verdict(decided, "1", params).status == "failed"
    assert previous_verdict(decided, "3", params) is None  # another champion: decide again
    stricter = params.model_copy(update={"promotion": params.promotion.model_copy(update={"confidence": 0.99})})
    assert previous_verdict(decided, "1", stricter) is None  # another rule: decide again
    assert previous_verdict(SimpleNamespace(version=2, tags={}), "2", params).status == "champion"
    rolled_back = SimpleNamespace(version=2, tags={"validation_status": "passed", "promoted_at": "t0",
                                                   "rolled_back_at": "t1", "decision.key": decision_key("1", params)})
    verdict = previous_verdict(rolled_back, "1", params)
    assert not verdict.promote and "rolled back at t1" in verdict.reasons[0]
    unfinished = SimpleNamespace(version=2, tags={"validation_status": "passed", "decision.key": decision_key("1", params)})
    assert previous_verdict(unfinished, "1", params).promote  # passed but never promoted (the run died): promote now


def prefect_post(api: str, path: str, body: dict) -> list | dict:
    request = urllib.request.Request(f"{api}/{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def prefect_get(api: str, path: str) -> dict:
    with urllib.request.urlopen(f"{api}/{path}", timeout=30) as response:
        return json.loads(response.read())


def copy_repo(source: Path, destination: Path) -> Path:
    """A copy of a pipeline project on which DVC finds everything done."""
    shutil.copytree(source, destination, symlinks=True)
    return destination


def environment(root: Path, api: str, registry: Path | None) -> dict[str, str]:
    env = {**project_env(root), "PREFECT_API_URL": api}
    if registry is not None:  # a registry shared by several checkouts (a team's tracking server)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{registry}/mlflow.db"
    return env


@dataclass
class Retrain:
    code: int
    output: str
    seconds: float


def retrain(root: Path, api: str, *arguments: str, registry: Path | None = None) -> Retrain:
    started = time.monotonic()
    result = subprocess.run([str(BIN / "art2mus"), "retrain", *arguments], cwd=root,
                            env=environment(root, api, registry), capture_output=True, text=True,
                            timeout=RETRAIN_TIMEOUT, check=False)
    return Retrain(result.returncode, result.stdout + result.stderr, time.monotonic() - started)


def stages_ran(output: str) -> list[str]:
    """The stages `art2mus retrain` says DVC ran."""
    [line] = [line for line in output.splitlines() if line.startswith("stages ran: ")]
    ran = line.removeprefix("stages ran: ").split(";")[0]
    return [] if ran == "none" else ran.split(", ")


def art2mus(root: Path, api: str, *arguments: str, registry: Path | None = None) -> str:
    result = subprocess.run([str(BIN / "art2mus"), *arguments], cwd=root, env=environment(root, api, registry),
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def succeeded(run: Retrain) -> str:
    assert run.code == 0, run.output[-6000:]
    return run.output


def store(path: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{path}/mlflow.db")


def versions(client: MlflowClient) -> dict[str, dict[str, str]]:
    return {str(found.version): found.tags for found in client.search_model_versions(f"name = '{MODEL_NAME}'")}


def aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(MODEL_NAME).aliases.items()}


def retrain_runs(client: MlflowClient) -> list:
    return client.search_runs([client.get_experiment_by_name("art2mus").experiment_id],
                              "tags.`art2mus.stage` = 'retrain'", order_by=["attributes.start_time ASC"])


def stage_runs(client: MlflowClient, parent: str) -> list[str]:
    found = client.search_runs([client.get_experiment_by_name("art2mus").experiment_id],
                               f"tags.`mlflow.parentRunId` = '{parent}'")
    return sorted(run.data.tags["art2mus.stage"] for run in found)


@dataclass
class FirstRuns:
    root: Path
    first: Retrain
    again: Retrain
    after_again: tuple[list[str], dict[str, str]]  # (versions, aliases) once the rerun finished
    weak: Retrain
    weak_again: Retrain


@pytest.fixture(scope="module")
def first_runs(pipeline_repo: Path, prefect_api: str, module_tmp: Path) -> FirstRuns:
    """Copy A: the first retrain, a rerun with nothing changed, then the weak variation."""
    root = copy_repo(pipeline_repo, module_tmp / "a")
    first = retrain(root, prefect_api)
    succeeded(first)
    again = retrain(root, prefect_api)
    after_again = sorted(versions(store(root))), aliases(store(root))
    set_params(root, WEAK)
    weak = retrain(root, prefect_api)
    weak_again = retrain(root, prefect_api)
    print(f"\nretrain wall times: first {first.seconds:.1f} s, no-op {again.seconds:.1f} s, "
          f"weak (train + evaluate) {weak.seconds:.1f} s, weak again {weak_again.seconds:.1f} s")
    return FirstRuns(root, first, again, after_again, weak, weak_again)


@slow
def test_the_first_run_makes_a_champion_by_the_floors(first_runs: FirstRuns) -> None:
    output = succeeded(first_runs.first)
    assert "version 1 is the new champion (was none)" in output
    # The fixture's repro left the models done. (Other e2e tests re-run a gate on the shared fixture;
    # its report then carries new GX timestamps, so features and pair may re-run, to identical outputs.)
    assert not set(stages_ran(output)) & {"prior", "latents", "train", "evaluate"}, output[-3000:]
    assert "the default DVC remote 'local' is a local folder" in output  # a fresh machine: nothing to pull
    assert "generate with: art2mus generate IMAGE -o OUT --model models:/art2mus@champion" in output
    client = store(first_runs.root)
    tags = versions(client)["1"]
    assert tags["validation_status"] == "passed" and tags["decision.champion"] == "none"
    assert float(tags["decision.retrieval_top1.challenger"]) >= float(tags["decision.retrieval_top1.floor"]) == 0.25
    assert "decision.retrieval_top1.lower_bound" not in tags  # no champion: nothing to compare with
    assert tags["promoted_by"].startswith("art2mus retrain flow")
    assert aliases(client)["champion"] == "1"  # still, after the module's later (weaker) challenger
    run = retrain_runs(client)[0]
    assert run.info.status == "FINISHED" and run.data.tags["retrain.version"] == "1"
    # The registration nests under the flow's run (so would a features/pair re-run, see above).
    assert [stage for stage in stage_runs(client, run.info.run_id) if stage not in {"features", "pair"}] == ["register"]


@slow
def test_a_rerun_with_nothing_changed_registers_nothing_and_says_so(first_runs: FirstRuns) -> None:
    output = succeeded(first_runs.again)
    assert "nothing changed: version 1 is already registered and is the champion" in output
    assert "nothing new to register" in output and stages_ran(output) == []
    assert first_runs.after_again == (["1"], {"champion": "1"})


@slow
def test_a_worse_challenger_is_registered_but_not_promoted(first_runs: FirstRuns) -> None:
    output = succeeded(first_runs.weak)
    assert stages_ran(output) == ["train", "evaluate"]  # an aligner-only variation: the prior is shared
    assert "version 2 is not promoted; champion stays 1" in output
    client = store(first_runs.root)
    tags = versions(client)["2"]
    assert tags["validation_status"] == "failed" and tags["decision.champion"] == "1"
    assert float(tags["decision.retrieval_top1.lower_bound"]) <= 0.0
    assert "retrieval_top1: failed" in tags["decision.reasons"]
    assert aliases(client) == {"champion": "1", "challenger": "2"}
    run = retrain_runs(client)[-2]
    assert stage_runs(client, run.info.run_id) == ["evaluate", "register", "train"]
    # Nothing changed since: the verdict holds (same champion, rule and evaluation), nothing is decided again.
    output = succeeded(first_runs.weak_again)
    assert "already decided against champion 1 with the same rule and evaluation: failed" in output
    assert sorted(versions(client)) == ["1", "2"] and aliases(client) == {"champion": "1", "challenger": "2"}


def artifact_text(client: MlflowClient, run_id: str, path: str, destination: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(destination))).read_text(encoding="utf-8")


@slow
def test_a_registered_version_has_a_model_card_and_its_licences(first_runs: FirstRuns, tmp_path: Path) -> None:
    client = store(first_runs.root)
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.tags["model_card"] == "model_card.md"
    card = artifact_text(client, version.run_id, "model_card.md", tmp_path / "card")
    sections = ["## Model", "## Intended use", "## Training data", "### Track licences", "### Parts",
                "## Training parameters", "## Evaluation", "## Limitations", "## Lineage"]
    assert [section for section in sections if section not in card] == []
    assert "Policy (params.yaml `promotion.intended_use`): **research**" in card
    assert "Commercial use: **not allowed**" in card and "tracks (non-commercial)" in card  # the sample's FMA strings
    assert "| this model (trained aligner) |" in card and "| oracle (the prior's own audio encoder" in card
    assert "below text-conditioned systems" in card and "Griffin-Lim" in card
    assert f"commit: `{version.tags['git.commit']}`" in card and "gate validate_raw: passed" in card
    licences = json.loads(version.tags["licences"])
    on_train_run = json.loads(artifact_text(client, version.tags["train_run_id"], "licences.json", tmp_path / "t"))
    assert licences == on_train_run and licences["commercial_use"] is False
    assert {row["licence"]["use"] for row in licences["tracks"]} == {"commercial", "noncommercial"}
    # The rerun with nothing changed wrote no second card.
    assert "model card: version 1 already has its model_card.md; nothing written" in first_runs.again.output


@slow
def test_the_change_report_says_what_changed_since_the_champion(first_runs: FirstRuns, prefect_api: str,
                                                                tmp_path: Path) -> None:
    client = store(first_runs.root)
    first, _, weak = retrain_runs(client)[:3]
    assert "no champion" in artifact_text(client, first.info.run_id, "change_report.md", tmp_path / "first")
    report = artifact_text(client, weak.info.run_id, "change_report.md", tmp_path / "weak")
    assert "version 2 against champion 1" in report and f"- `train.steps`: `{FIXTURE_STEPS}` -> `10`" in report
    assert "| retrieval_top1 |" in report and "lower bound" in report and "- status: failed" in report
    published = prefect_post(prefect_api, "artifacts/filter", {"artifacts": {"key": {"any_": ["change-report"]}}})
    assert any(artifact["type"] == "markdown" and "# Change report: version 2" in artifact["data"]
               and f"- `train.steps`: `{FIXTURE_STEPS}` -> `10`" in artifact["data"] for artifact in published)


@slow
def test_a_commercial_policy_blocks_promotion_naming_the_licences(first_runs: FirstRuns, prefect_api: str) -> None:
    root = first_runs.root
    set_params(root, {"promotion": {"intended_use": "commercial"}})
    try:
        promoted = subprocess.run([str(BIN / "art2mus"), "promote", "2", "--force"], cwd=root,
                                  env=environment(root, prefect_api, None), capture_output=True, text=True,
                                  timeout=300, check=False)
        assert promoted.returncode == 1, promoted.stdout + promoted.stderr
        assert "version 2 may not be promoted for commercial use" in promoted.stderr
        assert "'Attribution-Noncommercial-Share Alike 3.0 United States': " in promoted.stderr
        assert "tracks (non-commercial)" in promoted.stderr
        # The flow re-decides (the policy is part of the decision) and blocks before scoring anything.
        output = succeeded(retrain(root, prefect_api))
        assert "decide: licences: version 2 may not be promoted for commercial use" in output
        assert "its licences forbid promotion.intended_use" in output
        tags = versions(store(root))["2"]
        assert tags["validation_status"] == "failed" and "tracks (non-commercial)" in tags["decision.reasons"]
        assert aliases(store(root)) == {"champion": "1", "challenger": "2"}
    finally:
        set_params(root, {"promotion": {"intended_use": "research"}})


@dataclass
class TeamRuns:
    registry: Path
    copy: Path
    weak_first: Retrain
    better: Retrain


@pytest.fixture(scope="module")
def team_runs(first_runs: FirstRuns, pipeline_repo: Path, prefect_api: str, module_tmp: Path) -> TeamRuns:
    """Registry B: A's weak model becomes champion first (floors lowered), then copy D's default model."""
    registry = module_tmp / "registry_b"
    registry.mkdir()
    set_params(first_runs.root, LOWERED_FLOORS)
    weak_first = retrain(first_runs.root, prefect_api, registry=registry)
    succeeded(weak_first)
    copy = copy_repo(pipeline_repo, module_tmp / "d")
    better = retrain(copy, prefect_api, registry=registry)
    return TeamRuns(registry, copy, weak_first, better)


@slow
def test_a_better_challenger_is_promoted(team_runs: TeamRuns) -> None:
    assert "version 1 is the new champion (was none)" in succeeded(team_runs.weak_first)
    output = succeeded(team_runs.better)
    assert "version 2 is the new champion (was 1)" in output
    tags = versions(store(team_runs.registry))["2"]
    assert tags["validation_status"] == "passed" and tags["decision.champion"] == "1"
    assert float(tags["decision.retrieval_top1.lower_bound"]) > 0.0
    assert tags["previous_champion"] == "1"
    assert aliases(store(team_runs.registry)) == {"champion": "2"}


@slow
def test_rollback_and_history(team_runs: TeamRuns, prefect_api: str) -> None:
    registry, root = team_runs.registry, team_runs.copy
    assert "version 1 (rolled back from 2)" in art2mus(root, prefect_api, "rollback", "--by", "tests",
                                                       registry=registry)
    assert aliases(store(registry))["champion"] == "1"
    events = json.loads(art2mus(root, prefect_api, "history", "--json", registry=registry))
    assert [(event["kind"], event["previous"], event["version"]) for event in events] == [
        ("promote", None, "1"), ("promote", "1", "2"), ("rollback", "2", "1")]
    assert events[1]["by"].startswith("art2mus retrain flow") and events[2]["by"] == "tests"
    assert events[1]["metrics"]["retrieval_top1.lower_bound"] > 0
    # A rollback sticks: the flow does not promote the rolled-back version again.
    output = succeeded(retrain(root, prefect_api, registry=registry))
    assert "was champion before and was replaced (rolled back at" in output
    assert aliases(store(registry))["champion"] == "1"


@slow
def test_a_failed_gate_fails_the_flow_and_registers_nothing(team_runs: TeamRuns, prefect_api: str) -> None:
    registry, root = team_runs.registry, team_runs.copy
    before = versions(store(registry))
    set_params(root, {"validate_raw": {"min_artworks": 1_000_000}})
    run = retrain(root, prefect_api, registry=registry)
    assert run.code == 1, run.output[-6000:]
    assert "quality gate validate_raw failed; nothing was registered" in run.output
    assert "validate_raw: FAILED" in run.output
    assert versions(store(registry)) == before
    [artifact] = prefect_post(prefect_api, "artifacts/filter", {"artifacts": {"key": {"any_": ["quality-gates"]}}})
    assert artifact["type"] == "markdown" and "validate_raw: FAILED" in artifact["data"]
    assert "artworks" in artifact["data"] and "1000000" in artifact["data"].replace(",", "")
    runs = prefect_post(prefect_api, "flow_runs/filter", {"flow_runs": {"id": {"any_": [artifact["flow_run_id"]]}}})
    assert runs[0]["state_type"] == "FAILED"


@pytest.fixture(scope="module")
def copy_c(pipeline_repo: Path, module_tmp: Path) -> Path:
    return copy_repo(pipeline_repo, module_tmp / "c")


@slow
def test_two_concurrent_retrains_end_with_one_version_and_one_champion(copy_c: Path, prefect_api: str) -> None:
    commands = [subprocess.Popen([str(BIN / "art2mus"), "retrain"], cwd=copy_c, env=environment(copy_c, prefect_api, None),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [command.communicate(timeout=RETRAIN_TIMEOUT)[0] for command in commands]
    assert [command.returncode for command in commands] == [0, 0], "\n\n".join(outputs)[-8000:]
    assert sorted("version 1 is the new champion (was none)" in output for output in outputs) == [False, True]
    assert any("nothing changed: version 1 is already registered and is the champion" in output for output in outputs)
    client = store(copy_c)
    assert sorted(versions(client)) == ["1"] and aliases(client) == {"champion": "1"}
    assert [run.info.status for run in retrain_runs(client)] == ["FINISHED", "FINISHED"]
    limit = prefect_get(prefect_api, "v2/concurrency_limits/art2mus-retrain")
    assert limit["limit"] == 1 and limit["active_slots"] == 0
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=copy_c, env=project_env(copy_c), capture_output=True,
                            text=True, check=False)
    assert "up to date" in status.stdout, status.stdout + status.stderr


@slow
def test_a_held_project_lock_makes_a_retrain_refuse_clearly(copy_c: Path, prefect_api: str) -> None:
    from filelock import FileLock

    with FileLock(copy_c / ".dvc/tmp/art2mus-retrain.lock"):
        run = retrain(copy_c, prefect_api, "--wait", "0")
    assert run.code == 1 and f"another retrain is running in {copy_c}" in run.output, run.output[-3000:]


@slow
def test_schedule_serves_a_cron_deployment(copy_c: Path, prefect_api: str) -> None:
    server = subprocess.Popen([str(BIN / "art2mus"), "schedule", "--cron", "0 3 * * 1", "--name", "weekly-test"],
                              cwd=copy_c, env=environment(copy_c, prefect_api, None), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        found: list = []
        while not found and time.monotonic() < deadline and server.poll() is None:
            found = prefect_post(prefect_api, "deployments/filter", {"deployments": {"name": {"any_": ["weekly-test"]}}})
            time.sleep(1)
        assert found, f"no deployment appeared:\n{server.stdout.read() if server.poll() is not None else ''}"
        [schedule] = found[0]["schedules"]
        assert schedule["schedule"]["cron"] == "0 3 * * 1" and schedule["active"]
        assert found[0]["parameters"]["project_dir"] == str(copy_c)
    finally:
        stop_process_group(server, grace=60, sig=signal.SIGINT)
