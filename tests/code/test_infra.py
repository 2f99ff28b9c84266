"""The team infrastructure (infra/) is valid as written: no Docker engine or cluster runs here, so the
files are checked offline against the schemas their tools use, and against each other."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prefect.utilities.templating import apply_values

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MANIFESTS = INFRA / "k8s" / "manifests"
JOB_TEMPLATE = INFRA / "k8s" / "work-pool" / "gpu-job-template.json"
GPU_DEPLOYMENTS = INFRA / "k8s" / "work-pool" / "prefect.yaml"
COMPOSE = INFRA / "compose.yaml"
DOCKERFILES = {"train": INFRA / "docker" / "Dockerfile", "mlflow": INFRA / "docker" / "mlflow.Dockerfile"}
POLICIES = {"art2mus-dvc": INFRA / "s3" / "bucket-policy.json", "art2mus-mlflow": INFRA / "s3" / "mlflow-bucket-policy.json"}
KUBERNETES_VERSION = "1.33"  # the oldest Kubernetes the manifests promise to run on (infra/README.md)
GPU = "nvidia.com/gpu"


def manifest_documents() -> list[tuple[str, dict]]:
    documents = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                documents.append((f"{path.name}:{document['kind']}/{document['metadata']['name']}", document))
    return documents


DOCUMENTS = manifest_documents()


@pytest.mark.parametrize("name,document", DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_kubernetes_manifest_is_valid_for_the_pinned_version(name: str, document: dict) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = copy.deepcopy(next(doc for _, doc in DOCUMENTS if doc["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="'resource' was unexpected"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_manifests_cover_the_team_services_and_fill_no_secret() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCUMENTS}
    assert {("StatefulSet", "postgres"), ("Service", "postgres"), ("Deployment", "mlflow"), ("Service", "mlflow"),
            ("Deployment", "prefect-worker"), ("ServiceAccount", "prefect-worker"), ("Role", "prefect-worker"),
            ("RoleBinding", "prefect-worker")} <= kinds
    assert not [name for name, doc in DOCUMENTS if doc["kind"] == "Secret"]  # referenced, created by the team
    postgres = next(doc for _, doc in DOCUMENTS if doc["kind"] == "StatefulSet")
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


def references(node, kind: str) -> set[tuple[str, str | None]]:
    """Every (name, key) a manifest takes from a Secret (kind "secret") or ConfigMap ("configMap")."""
    found = set()
    if isinstance(node, dict):
        for field, value in node.items():
            if field == f"{kind}KeyRef":
                found.add((value["name"], value["key"]))
            elif field == f"{kind}Ref" and isinstance(value, dict):
                found.add((value["name"], None))
            else:
                found |= references(value, kind)
    elif isinstance(node, list):
        for item in node:
            found |= references(item, kind)
    return found


def test_every_referenced_config_map_key_exists_and_every_secret_is_documented() -> None:
    template = json.loads(JOB_TEMPLATE.read_text(encoding="utf-8"))
    sources = [doc for _, doc in DOCUMENTS] + [template["job_configuration"]["job_manifest"]]
    config_maps = {doc["metadata"]["name"]: doc["data"] for _, doc in DOCUMENTS if doc["kind"] == "ConfigMap"}
    for name, key in references(sources, "configMap"):
        assert name in config_maps, f"ConfigMap {name} is referenced but not defined in {MANIFESTS}"
        assert key is None or key in config_maps[name], f"ConfigMap {name} has no key {key}"
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    for name, key in references(sources, "secret"):
        assert f"create secret generic {name}" in readme, f"infra/README.md does not say how to create Secret {name}"
        assert key is None or f"--from-literal={key}=" in readme, f"infra/README.md does not fill {name}.{key}"
    worker = next(doc for _, doc in DOCUMENTS if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "prefect-worker")
    role = next(doc for _, doc in DOCUMENTS if doc["kind"] == "Role")
    assert worker["spec"]["template"]["spec"]["serviceAccountName"] == "prefect-worker"
    assert any("jobs" in rule["resources"] and "create" in rule["verbs"] for rule in role["rules"])


def rendered_job(**values) -> dict:
    """The work pool's Job for a flow run, as Prefect's Kubernetes worker builds it from the template."""
    template = json.loads(JOB_TEMPLATE.read_text(encoding="utf-8"))
    variables = template["variables"]["properties"]
    filled = {name: spec["default"] for name, spec in variables.items() if "default" in spec}
    filled.update(name="art2mus-retrain", env={"PREFECT__FLOW_RUN_ID": "0"}, labels={"prefect.io/flow-run-name": "x"},
                  command="prefect flow-run execute", **values)
    manifest = apply_values(template["job_configuration"], filled)["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    # What the worker does next: env as a list of name/value pairs, the command split into args.
    container["env"] = [{"name": key, "value": value} for key, value in container["env"].items()]
    container["args"] = shlex.split(container["args"])
    return manifest


def test_work_pool_job_template_requests_gpus_on_gpu_nodes() -> None:
    job = rendered_job()
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"][GPU] == resources["requests"][GPU] == 1
    assert any(GPU in key for key in pod["nodeSelector"])
    assert any(toleration["key"] == GPU for toleration in pod["tolerations"])
    assert pod["serviceAccountName"] == "art2mus-train" and pod["automountServiceAccountToken"] is False

    four = rendered_job(gpu_count=4)
    kubernetes_validate.validate(four, KUBERNETES_VERSION, strict=True)
    assert four["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU] == 4


def test_gpu_deployment_targets_the_pool_the_worker_polls() -> None:
    config = yaml.safe_load(GPU_DEPLOYMENTS.read_text(encoding="utf-8"))
    variables = json.loads(JOB_TEMPLATE.read_text(encoding="utf-8"))["variables"]["properties"]
    worker = next(doc for _, doc in DOCUMENTS if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "prefect-worker")
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    pool = command[command.index("--pool") + 1]
    assert command[command.index("--type") + 1] == "kubernetes"
    for deployment in config["deployments"]:
        assert deployment["work_pool"]["name"] == pool
        assert set(deployment["work_pool"]["job_variables"]) <= set(variables)
        module, function = deployment["entrypoint"].split(":")
        assert re.search(rf"^def {function}\(", (ROOT / module).read_text(encoding="utf-8"), re.MULTILINE)
        assert deployment["schedules"][0]["cron"]


def check_compose(path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with its vendored compose-spec schema (no download)."""
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120, check=False)


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    result = check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr

    broken = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    broken["services"]["mlflow"]["portz"] = ["5000:5000"]
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    result = check_compose(tmp_path / "compose.yaml")
    assert result.returncode == 1 and "portz" in result.stdout + result.stderr


def test_compose_runs_the_shared_services_without_literal_credentials() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"postgres", "seaweedfs", "mlflow", "prefect-server", "worker"} <= set(services)
    # MLflow proxies artifacts to S3 (MLFLOW_ARTIFACTS_DESTINATION is --artifacts-destination's variable).
    assert services["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert services["worker"]["build"]["dockerfile"] == "infra/docker/Dockerfile"
    secret_names = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|CONNECTION_URL|STORE_URI", re.IGNORECASE)
    for name, service in services.items():
        environment = service.get("environment", {})
        for key in environment:
            assert not secret_names.search(key) or key.endswith("_FILE"), f"{name}: {key} set in compose.yaml"
        for published in service.get("ports", []):
            assert published.startswith("127.0.0.1:"), f"{name} publishes {published} beyond loopback"
    examples = INFRA / "secrets.example"
    wanted = {Path(spec["file"]).name for spec in compose["secrets"].values()}
    wanted |= {Path(file).name for service in services.values() for file in service.get("env_file", [])}
    assert wanted <= {path.name for path in examples.iterdir()}
    for path in examples.iterdir():
        assert "CHANGE_ME" in path.read_text(encoding="utf-8"), f"{path} holds something other than placeholders"
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/secrets/postgres_password"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "infra/secrets/ must be git-ignored"


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("bucket", sorted(POLICIES))
def test_bucket_policy_grants_least_privilege(bucket: str) -> None:
    policy = json.loads(POLICIES[bucket].read_text(encoding="utf-8"))
    assert policy["Version"] == "2012-10-17"
    statements = policy["Statement"]
    sids = [statement["Sid"] for statement in statements]
    assert len(sids) == len(set(sids))
    for statement in statements:
        assert {"Effect", "Principal", "Action", "Resource"} <= set(statement), statement["Sid"]
        assert statement["Effect"] in ("Allow", "Deny")
        for resource in as_list(statement["Resource"]):
            assert resource == f"arn:aws:s3:::{bucket}" or resource.startswith(f"arn:aws:s3:::{bucket}/")
        if statement["Effect"] == "Allow":
            assert statement["Principal"] != "*" and all(action.startswith("s3:") and "*" not in action
                                                         for action in as_list(statement["Action"]))
    allowed = {principal for statement in statements if statement["Effect"] == "Allow"
               for principal in as_list(statement["Principal"]["AWS"])}
    other = "art2mus-mlflow-server" if bucket == "art2mus-dvc" else "art2mus-training"
    assert allowed and not any(principal.endswith(f"role/{other}") for principal in allowed)
    assert any(statement["Effect"] == "Deny" and statement["Condition"]["Bool"]["aws:SecureTransport"] == "false"
               for statement in statements)


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_installs_through_the_constraints_as_a_non_root_user(image: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    installs = [part for kind, args in instructions if kind == "RUN" for part in args.split("&&") if "pip install" in part
                and "--upgrade pip" not in part]
    assert installs
    for command in installs:
        assert re.search(r"-c \S*constraints\.txt", command), f"{DOCKERFILES[image].name}: {command.strip()}"
    users = [args.strip() for kind, args in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(kind == "ENTRYPOINT" for kind, _ in instructions)


def test_training_image_has_the_torch_pin_of_the_constraints_and_a_cuda_base() -> None:
    instructions = dockerfile_instructions(DOCKERFILES["train"])
    arguments = dict(re.match(r"(\w+)=?(.*)", args).groups() for kind, args in instructions if kind == "ARG")
    assert arguments["TORCH_VERSION"] == constraint_pins()["torch"], "infra/docker/Dockerfile pins another torch"
    assert arguments["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert any(kind == "RUN" and '"torch==${TORCH_VERSION}"' in args for kind, args in instructions)
    assert any(kind == "RUN" and "python3.11 -m venv" in args for kind, args in instructions)
    environment = " ".join(args for kind, args in instructions if kind == "ENV")
    for setting in ("ART2MUS_PROJECT_DIR=", "PREFECT_HOME=", "DVC_NO_ANALYTICS=1", "MLFLOW_DISABLE_TELEMETRY=true"):
        assert setting in environment
    entrypoint = (INFRA / "docker" / "entrypoint.sh").read_text(encoding="utf-8")
    assert entrypoint.startswith("#!/bin/sh") and entrypoint.rstrip().endswith('exec "$@"')


def test_docker_build_context_leaves_data_models_and_the_venv_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv/", "data/", "models/", "infra/secrets/", ".dvc/config.local"} <= ignored
    assert not {".git", ".git/", "dvc.yaml", "params.yaml"} & ignored  # DVC and lineage need them
