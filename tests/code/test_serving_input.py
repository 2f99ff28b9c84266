"""The served model's input contract: image bytes or base64 in, never a path; bad values are 400s.

Limits (`serving:` in params.yaml, carried by the logged model's model_config): an image is checked
from its header (pixel count) before any pixel is decoded, a request's rows are counted before any
image is looked at, and every row is checked before the first one is decoded; rows are then decoded
and generated one at a time, so at most one decoded image is alive at once.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from mlflow.pyfunc import PythonModelContext
from PIL import Image

from art2mus.config import ServingParams
from art2mus.serving.pyfunc import (
    Art2MusModel,
    InvalidRequest,
    decode_image,
    example_image_base64,
    parse_requests,
)
from bench.serving_memory import blank_png  # 9,400 x 9,400 in 86 KB, streamed
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
    ({"steps": 201}, "got 201 \\(serving.max_steps\\)"),
    ({"seconds": 31.0}, "\\(serving.max_seconds\\)"),
    ({"guidance_scale": 21.0}, "\\(serving.max_guidance_scale\\)"),
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
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))  # no recorded hash to verify on load


def served_model(folder: Path, model_config: dict) -> Art2MusModel:
    served = Art2MusModel()
    served.load_context(PythonModelContext(artifacts={"model": str(folder)}, model_config=model_config))
    return served


@pytest.fixture(scope="module")
def model(tiny_folder: Path) -> Art2MusModel:
    return served_model(tiny_folder, {"identity": "id-1"})  # logged before the limits travelled: defaults


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
    assert both["weights_sha256"].iloc[0] == str(model.pipeline.info.get("weights_sha256", ""))
    assert both["model_identity"].iloc[0] == "id-1"


def test_an_image_over_the_pixel_cap_is_refused_from_its_header_naming_the_limit() -> None:
    huge = blank_png(9400, 9400)
    assert len(huge) < 100_000  # 88 megapixels in 86 KB
    for value in (huge, base64.b64encode(huge).decode(), blank_png(9400, 9400, pixels=False)):
        with pytest.raises(InvalidRequest) as error:  # the header-only PNG proves no pixel was decoded
            decode_image(value)
        assert "9,400 x 9,400" in error.value.message and "serving.max_pixels (16,777,216)" in error.value.message
        assert error.value.get_http_status_code() == 400
    assert decode_image(blank_png(4096, 4096)).size == (4096, 4096)  # the cap itself is accepted
    with pytest.raises(InvalidRequest, match=r"30 x 20 pixels is more than serving.max_pixels \(599\)"):
        decode_image(PNG, ServingParams(max_pixels=599))


def test_pillows_own_bomb_check_is_not_what_answers() -> None:
    """Above 2 x PIL.Image.MAX_IMAGE_PIXELS Pillow refuses to even open an image; the answer still names our limit."""
    with pytest.raises(InvalidRequest) as error:
        decode_image(blank_png(20000, 20000, pixels=False))
    assert "serving.max_pixels (16,777,216)" in error.value.message and "400,000,000" in error.value.message
    assert "decompression bomb" not in error.value.message


def test_the_byte_cap_is_named_and_checked_before_base64_is_decoded() -> None:
    with pytest.raises(InvalidRequest, match=r"more than serving.max_image_bytes \(100\)"):
        decode_image(PNG, ServingParams(max_image_bytes=100))
    with pytest.raises(InvalidRequest, match=r"serving.max_image_bytes \(100\)"):
        decode_image("A" * 1000, ServingParams(max_image_bytes=100))


def test_rows_over_the_cap_are_refused_before_any_image_is_looked_at() -> None:
    rows = [{"image": PNG}] * 16 + [{"image": "/etc/passwd"}]
    with pytest.raises(InvalidRequest) as error:
        parse_requests(rows)
    assert error.value.message.startswith("17 rows is more than serving.max_rows (16)")
    assert len(parse_requests(rows[:16])) == 16
    with pytest.raises(InvalidRequest, match=r"2 rows is more than serving.max_rows \(1\)"):
        parse_requests(rows[:2], ServingParams(max_rows=1))


def test_checking_a_request_decodes_no_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row's header is checked before any row is decoded: a huge image in row 2 fails the request with
    nothing decoded at all, and a request that passes holds its rows undecoded."""
    from PIL import ImageFile

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("parse_requests decoded an image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    good = base64.b64encode(PNG).decode()
    with pytest.raises(InvalidRequest, match=r"^row 2: image: 9,400 x 9,400 pixels"):
        parse_requests([{"image": good}, {"image": PNG}, {"image": blank_png(9400, 9400)}])
    checked = parse_requests([{"image": good}, {"image": PNG, "steps": 3}])
    assert [(request.size, request.steps) for request in checked] == [((30, 20), 25), ((30, 20), 3)]


class CountingPipeline:
    """The model's pipeline, recording the images it is called with."""

    def __init__(self, pipeline) -> None:
        self.pipeline, self.calls = pipeline, []

    def __getattr__(self, name: str):
        return getattr(self.pipeline, name)

    def __call__(self, images: list, config):
        self.calls.append([image.size for image in images])
        return self.pipeline(images, config)


def test_an_over_limit_row_fails_the_request_before_any_row_is_generated(model: Art2MusModel,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingPipeline(model.pipeline)
    monkeypatch.setattr(model, "pipeline", counting)
    settings = {"seconds": 0.5, "steps": 1}
    with pytest.raises(InvalidRequest, match="^row 1: image: 9,400 x 9,400 pixels .* serving.max_pixels"):
        model.predict(None, pd.DataFrame([{"image": PNG, **settings}, {"image": blank_png(9400, 9400), **settings}]))
    assert counting.calls == []
    # A row whose header passes but whose pixels are cut short is found when its turn comes: still a 400 for
    # the whole request, named by its row (one answer, no partial results).
    with pytest.raises(InvalidRequest, match="^row 1: image: not a decodable image"):
        model.predict(None, pd.DataFrame([{"image": PNG, **settings}, {"image": PNG[:len(PNG) // 2], **settings}]))
    assert counting.calls == [[(30, 20)]]


def test_the_limits_travel_in_the_model_config(tiny_folder: Path) -> None:
    limited = served_model(tiny_folder, {"identity": "id-2", "serving": {"max_rows": 1, "max_pixels": 600}})
    settings = {"seconds": 0.5, "steps": 1}
    with pytest.raises(InvalidRequest, match=r"2 rows is more than serving.max_rows \(1\)"):
        limited.predict(None, pd.DataFrame([{"image": PNG, **settings}] * 2))
    with pytest.raises(InvalidRequest, match=r"32 x 32 pixels is more than serving.max_pixels \(600\)"):
        limited.predict(None, pd.DataFrame([{"image": example_image_base64(), **settings}]))
    answered = limited.predict(None, pd.DataFrame([{"image": PNG, **settings}]))
    assert answered["model_identity"].tolist() == ["id-2"] and answered["seconds"].tolist() == [0.5]
