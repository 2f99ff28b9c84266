"""The served model's input contract: image bytes or base64 in, never a path; bad values are 400s."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from mlflow.pyfunc import PythonModelContext
from PIL import Image

from art2mus.serving.pyfunc import (
    Art2MusModel,
    InvalidRequest,
    decode_image,
    example_image_base64,
    parse_requests,
)
from tests.tiny_model import build_tiny_model


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


PICTURE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
PNG = encoded(PICTURE, "PNG")


@pytest.mark.parametrize("value", [
    PNG,  # raw bytes, in-process
    base64.b64encode(PNG).decode(),  # what JSON clients send
    base64.encodebytes(PNG).decode(),  # MLflow's own encoder wraps lines
    "data:image/png;base64," + base64.b64encode(PNG).decode(),
])
def test_images_arrive_as_bytes_or_base64(value) -> None:
    image = decode_image(value)
    assert image.size == (30, 20) and np.array_equal(np.asarray(image), np.asarray(PICTURE))


def test_a_jpeg_whose_base64_starts_with_a_slash_is_an_image_not_a_path() -> None:
    text = base64.b64encode(encoded(PICTURE, "JPEG")).decode()
    assert text.startswith("/9j/")
    assert decode_image(text).size == (30, 20)


@pytest.mark.parametrize("cut", [4, 40, 0.5, -10])
@pytest.mark.parametrize("as_text", [True, False])
def test_a_truncated_jpeg_is_a_truncated_image_not_a_path(cut, as_text) -> None:
    jpeg = encoded(PICTURE, "JPEG")
    data = jpeg[:int(len(jpeg) * cut) if isinstance(cut, float) else cut]
    value = base64.b64encode(data).decode() if as_text else data
    assert not as_text or value.startswith("/9j/")
    with pytest.raises(InvalidRequest) as error:
        decode_image(value)
    assert "not a decodable image" in error.value.message and "file path" not in error.value.message
    assert error.value.get_http_status_code() == 400


@pytest.mark.parametrize("value", ["/etc/passwd", "./art.jpg", "../data/x", "painting.JPG", "C:\\images\\a.png",
                                   "file:///srv/a.png", "~/a.png", "/abcdefghijk", b"/etc/passwd"])
def test_anything_that_looks_like_a_path_is_refused_with_a_400(value) -> None:
    with pytest.raises(InvalidRequest) as error:
        decode_image(value)
    assert "looks like a file path" in error.value.message and "never reads files" in error.value.message
    assert error.value.get_http_status_code() == 400


@pytest.mark.parametrize("value, message", [
    (base64.b64encode(b"hello, not a picture").decode(), "not a decodable image"),
    ("%%% not base64 %%%", "not valid base64"),
    (12, "expected base64 text or bytes, got int"),
    ("", "image: empty"),
    (base64.b64encode(PNG[:40]).decode(), "not a decodable image"),  # truncated
])
def test_values_that_are_not_images_say_what_is_wrong(value, message) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_image(value)


@pytest.mark.parametrize("row, message", [
    ({"steps": 0}, "row 0: steps: must be in \\[1, 200\\], got 0"),
    ({"steps": 1000}, "steps: must be in"),
    ({"steps": 2.5}, "steps: expected a whole number"),
    ({"steps": "many"}, "steps: expected a number, got 'many'"),
    ({"seconds": -1.0}, "seconds: must be in \\(0, 30\\]"),
    ({"seconds": float("inf")}, "seconds: expected a finite number"),
    ({"guidance_scale": 50.0}, "guidance_scale: must be in \\[0, 20\\]"),
])
def test_settings_are_bounded_and_named_by_row(row, message) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_requests({"image": PNG, **row})


def test_requests_come_as_frames_dicts_or_records_and_defaults_fill_in() -> None:
    image = base64.b64encode(PNG).decode()
    from_dict = parse_requests({"image": image})
    from_records = parse_requests([{"image": image, "steps": 3}, {"image": PNG, "seed": 7, "seconds": None}])
    from_frame = parse_requests(pd.DataFrame({"image": [image], "seconds": [np.nan]}))
    assert (from_dict[0].steps, from_dict[0].seed, from_dict[0].seconds, from_dict[0].guidance_scale) == (25, 0, None, 3.5)
    assert [(r.steps, r.seed) for r in from_records] == [(3, 0), (25, 7)] and from_frame[0].seconds is None
    with pytest.raises(InvalidRequest, match="no rows"):
        parse_requests(pd.DataFrame({"image": []}))
    with pytest.raises(InvalidRequest, match="missing the `image` column"):
        parse_requests({"picture": image})
    with pytest.raises(InvalidRequest, match="row 1: image: .* looks like a file path"):
        parse_requests([{"image": image}, {"image": "/srv/art/x.png"}])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Art2MusModel:
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"), {"weights_sha256": "ab" * 32})
    served = Art2MusModel()
    served.load_context(PythonModelContext(artifacts={"model": str(folder)}, model_config={"identity": "id-1"}))
    return served


def wav(row: pd.Series) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(base64.b64decode(row["wav_base64"])), dtype="float32")


def test_each_row_gets_a_wav_that_depends_only_on_that_row(model: Art2MusModel) -> None:
    other = base64.b64encode(encoded(Image.new("RGB", (16, 16), (250, 10, 10)), "PNG")).decode()
    settings = {"seconds": 0.5, "steps": 2, "seed": 3}
    both = model.predict(None, pd.DataFrame([{"image": other, **settings}, {"image": example_image_base64(), **settings}]))
    alone = model.predict(None, pd.DataFrame([{"image": example_image_base64(), **settings}]))
    assert list(both.columns) == ["wav_base64", "sample_rate", "seconds", "weights_sha256", "model_identity"]
    (first, rate), (second, _), (single, _) = wav(both.iloc[0]), wav(both.iloc[1]), wav(alone.iloc[0])
    assert rate == 16000 and len(second) == 8000 and both["seconds"].tolist() == [0.5, 0.5]
    assert np.array_equal(second, single) and not np.array_equal(first, second)
    assert both["weights_sha256"].iloc[0] == "ab" * 32 and both["model_identity"].iloc[0] == "id-1"
