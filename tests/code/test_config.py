"""params.yaml is read through one typed config; bad keys and values fail with their dotted name."""

import os
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from art2mus.config import ConfigError, Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def test_the_project_params_file_is_valid_and_complete() -> None:
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields), "every section in params.yaml is typed, and vice versa"
    assert params.split.ratios.test == raw["split"]["ratios"]["test"]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"split": {"ratio": {"train": 1.0}}}, "split.ratio: unknown key"),
        ({"split": {"ratios": {"train": 0.9, "val": 0.1, "test": 0.2}}}, "split.ratios: Value error, ratios must sum to 1"),
        ({"ingest": {"workers": 0}}, "ingest.workers: Input should be greater than or equal to 1"),
        ({"ingest": {"fma": {"size": "huge"}}}, "ingest.fma.size: Input should be 'small', 'medium', 'large' or 'full'"),
        ({"validate_raw": {"track_seconds": {"min": 5, "max": 1}}},
         "validate_raw.track_seconds: Value error, min (5.0) is greater than max"),
        ({"sample": {"n_artworks": "many"}}, "sample.n_artworks: Input should be a valid integer"),
        ({"nonsense": {}}, "nonsense: unknown key"),
        ({"audio": {"crop_seconds": 0.03}}, "audio: Value error, crop_seconds 0.03 is 480 samples, shorter than one "
         "STFT window (n_fft 1024); give at least 0.064 s"),
    ],
)
def test_bad_settings_fail_with_the_dotted_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_params(raw, "params.yaml")
    assert message in str(error.value)


def test_missing_and_malformed_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("split: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("deleted", [["train"], ["promotion"], ["train", "promotion", "gc"]])
def test_a_params_file_missing_a_section_is_refused_naming_it(tmp_path: Path, deleted: list[str]) -> None:
    """A deleted section is not filled with defaults: the pipeline (DVC's `params:`) needs every one."""
    from typer.testing import CliRunner

    from art2mus.cli.main import app

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section in deleted:
        del raw[section]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    expected = f"missing section(s): {', '.join(deleted)}"
    with pytest.raises(ConfigError) as error:
        load_params(path, require_sections=True)
    assert str(error.value).startswith(f"{path}: {expected}")
    with pytest.raises(ConfigError, match=r"missing section\(s\)"):
        parse_params(raw, str(path), require_sections=True)
    result = CliRunner().invoke(app, ["params", "--params", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"art2mus: params: {path}: {expected}" in result.output and "Traceback" not in result.output


def test_a_section_must_be_present_but_its_keys_may_be_omitted(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"], raw["gc"] = {}, {}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(path, require_sections=True)
    assert params.train.hidden_dim == 256 and params.gc.keep_versions == 3  # the profile's and the model's defaults
    assert parse_params({"split": {"seed": 1}}).split.seed == 1  # mappings built in code stay partial by default
    assert Params().train == params.train


def test_sections_are_immutable_once_loaded() -> None:
    params = parse_params({})
    with pytest.raises(ValidationError):
        params.split.seed = 3  # type: ignore[misc]


def test_auto_values_resolve_to_the_profile_and_explicit_values_win() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["audio"]["crop_seconds"] == "auto" and raw["train"]["lr"] == "auto"
    tiny = parse_params(raw)
    assert (tiny.audio.crop_seconds, tiny.audio.crop_offset_seconds, tiny.train.hidden_dim) == (2.56, 0.5, 256)
    assert tiny.backbone.null_conditioning == "zeros" and not tiny.train.gradient_checkpointing
    raw["backbone"]["profile"] = "audioldm2"
    real = parse_params(raw)
    assert (real.audio.crop_seconds, real.audio.crop_offset_seconds) == (10.24, 10.0)
    assert (real.train.hidden_dim, real.train.tokens, real.train.lr, real.train.batch_size, real.train.grad_accum,
            real.train.micro_batch, real.train.warmup_steps, real.train.steps) == (1536, 4, 2e-5, 16, 8, 2, 500, 20000)
    assert real.train.gradient_checkpointing and real.backbone.null_conditioning == "zeros"
    assert real.backbone.revision == "0019cb0bd4d314accff72aee1c3abd6f22929ba5"
    raw["train"]["lr"] = 1e-4
    assert parse_params(raw).train.lr == 1e-4


@pytest.mark.parametrize("override, message", [
    ({"audio": {"crop_seconds": 2.56}}, "audio.crop_seconds: 2.56 s cannot work with backbone.profile audioldm2"),
    ({"sample": {"track_seconds": 12.0}}, "sample.track_seconds: 12 s is shorter than the model's crop"),
    ({"train": {"batch_size": 16, "grad_accum": 3}}, "must divide by grad_accum"),
])
def test_combinations_that_cannot_work_are_refused_naming_the_key(override: dict, message: str) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["backbone"]["profile"] = "audioldm2"
    for section, values in override.items():
        raw[section].update(values)
    with pytest.raises(ConfigError) as error:
        parse_params(raw, "params.yaml")
    assert message in str(error.value) and "{'audio'" not in str(error.value)


def test_the_tiny_prior_has_no_empty_prompt_null() -> None:
    with pytest.raises(ConfigError, match="backbone.null_conditioning"):
        parse_params({"backbone": {"null_conditioning": "empty_prompt"}})


def test_every_stage_whose_resolved_params_depend_on_the_profile_lists_it_in_dvc_yaml() -> None:
    """DVC compares params.yaml's raw values: an `auto` that resolves differently by profile is invisible to
    it, so such a stage must list backbone.profile, or switching profiles would not re-run it."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    resolved = {}
    for profile in ("tiny", "audioldm2"):
        variant = {**raw, "backbone": {**raw["backbone"], "profile": profile}}
        resolved[profile] = parse_params(variant).model_dump(mode="json")

    def value(tree: dict, dotted: str):
        for part in dotted.split("."):
            tree = tree[part]
        return tree

    needing = set()
    for name, stage in stages.items():
        keys = [key for key in stage.get("params", []) if isinstance(key, str)]
        if any(value(resolved["tiny"], key) != value(resolved["audioldm2"], key) for key in keys
               if key != "backbone.profile" and not key.startswith("backbone")):
            needing.add(name)
            assert "backbone.profile" in keys or "backbone" in keys, f"stage {name} must list backbone.profile"
    assert {"sample", "ingest", "features", "latents", "train", "evaluate"} <= needing


def test_evaluation_rows_and_the_planted_estimator_can_be_narrowed() -> None:
    narrowed = parse_params({"evaluate": {"generate": ["trained"], "planted_tracks": 0}}).evaluate
    assert narrowed.generate == ["trained"] and narrowed.planted_tracks == 0
    with pytest.raises(ConfigError, match="generate must include trained"):
        parse_params({"evaluate": {"generate": ["mean"]}})
    with pytest.raises(ConfigError, match="planted_tracks"):
        parse_params({"evaluate": {"planted_tracks": 3}})


def test_the_readme_shows_every_profile_dependent_key_with_both_values() -> None:
    from art2mus.config import PROFILE_DEFAULTS

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The real profile"):readme.index("## Evaluation")]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    for profile, defaults in PROFILE_DEFAULTS.items():
        for dotted, value in defaults.items():
            if isinstance(value, bool):
                shown = str(value).lower()
            elif isinstance(value, int):
                shown = f"{value:,}"
            else:
                shown = f"{value:g}" if isinstance(value, float) else str(value)
            key = dotted.split(".")[-1]
            assert any(key in row and (shown in row or str(value) in row) for row in rows), \
                f"README's profile table has no row with {dotted} = {shown} ({profile})"


def test_threads_auto_follows_the_jobs_share_of_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """`threads: auto` takes OMP_NUM_THREADS where a scheduler (or a test worker) sets it, else the CPUs
    this process may use; an explicit number wins. (A fixed 2 oversubscribed two test workers' cores.)"""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = parse_params(raw, "params.yaml")
    assert (params.prior.threads, params.train.threads, params.evaluate.threads) == (1, 1, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert parse_params(raw, "params.yaml").train.threads == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert parse_params(raw, "params.yaml").evaluate.threads == len(os.sched_getaffinity(0))
    raw["train"]["threads"] = 5
    assert parse_params(raw, "params.yaml").train.threads == 5
