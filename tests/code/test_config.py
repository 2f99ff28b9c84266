"""params.yaml is read through one typed config; bad keys and values fail with their dotted name."""

from pathlib import Path

import pytest
import yaml

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
        ({"validate_raw": {"track_seconds": {"min": 5, "max": 1}}}, "validate_raw.track_seconds: Value error, min (5.0) is greater than max"),
        ({"sample": {"n_artworks": "many"}}, "sample.n_artworks: Input should be a valid integer"),
        ({"nonsense": {}}, "nonsense: unknown key"),
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


def test_sections_are_immutable_once_loaded() -> None:
    params = parse_params({})
    with pytest.raises(Exception):
        params.split.seed = 3  # type: ignore[misc]
