"""Images reach only a short list of decoders (`registry.images.IMAGE_FORMATS`: PNG, JPEG, WebP).
An EPS "image" would make Pillow run Ghostscript on the file's bytes: it is refused, in one line
naming the file, the example and the format, before any plugin but the listed ones sees it."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest

from registry.errors import InvalidInput
from registry.images import IMAGE_FORMATS, decode_image
from tests.bad_inputs._helpers import cli, refusal, state

REPO_ROOT = Path(__file__).resolve().parents[2]
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n"


def _encoded(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


def _image_evalset(folder: Path, image: bytes | None = None, image_path: str | None = None) -> Path:
    """An image eval set of one example, written by hand (write_evalset would refuse it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    columns = {
        "example_id": pa.array(["cat-0"]),
        "task": pa.array(["i2t"]),
        "input_ids": pa.array([[1, -200, 2, 5, 6]], pa.list_(pa.int64())),
        "labels": pa.array([[-100, -100, -100, 5, 6]], pa.list_(pa.int64())),
    }
    if image_path is not None:
        columns["image_path"] = pa.array([image_path])
    else:
        columns["image"] = pa.array([image], pa.binary())
    pq.write_table(pa.table(columns), folder / "part-00000.parquet")
    manifest = {"name": folder.name, "vision": {"tower": "test/siglip-tiny"}, "files": ["part-00000.parquet"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_the_listed_formats_decode(fmt):
    im = decode_image(_encoded(fmt), what="test image")
    assert im.format == fmt and im.size == (8, 6)


@pytest.mark.parametrize(("fmt", "data"), [("EPS", EPS), ("GIF", None), ("BMP", None), ("TIFF", None)])
def test_other_formats_are_refused_naming_the_format(fmt, data):
    with pytest.raises(InvalidInput) as info:
        decode_image(data or _encoded(fmt), what="row 0 (example 'x')", path="/data/part.parquet")
    msg = str(info.value)
    assert msg.startswith("/data/part.parquet: row 0 (example 'x'): ") and f"image is {fmt}," in msg, msg
    assert "PNG, JPEG, WEBP" in msg


def test_an_eps_image_is_refused_by_evalset_add_and_ghostscript_never_runs(tmp_path):
    ran = tmp_path / "ghostscript-ran"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    gs = fake_bin / "gs"  # what Pillow's EPS plugin would run
    gs.write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
    gs.chmod(0o755)
    es = _image_evalset(tmp_path / "evalsets" / "eps-images", image=EPS)
    home = tmp_path / "home"
    proc = cli(
        ["evalset", "add", es], home=home, env={"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}, timeout=60
    )
    refusal(proc, es / "part-00000.parquet", "example 'cat-0'", "image is EPS", "PNG, JPEG, WEBP")
    assert not ran.exists(), "Pillow ran Ghostscript on an eval set's image"
    registry, mlflow = state(home)
    assert not any(registry.values()) and not mlflow, (registry, mlflow)  # an empty registry, no MLflow store


def test_an_image_file_in_another_format_is_refused_naming_that_file(tmp_path):
    from registry.evalset import EvalSet

    es = _image_evalset(tmp_path / "gif-images", image_path="images/cat.gif")
    (es / "images").mkdir()
    (es / "images" / "cat.gif").write_bytes(_encoded("GIF"))
    with pytest.raises(InvalidInput) as info:
        EvalSet.load(es)
    msg = str(info.value)
    assert str(es / "images" / "cat.gif") in msg and "example 'cat-0'" in msg and "image is GIF" in msg, msg


def test_every_image_is_decoded_through_registry_images():
    """One function opens images; a second `Image.open` would bypass the list of decoders."""
    offenders = []
    for package in ("registry", "evaluator", "dashboard", "evalboard"):
        for f in sorted((REPO_ROOT / package).rglob("*.py")):
            if f == REPO_ROOT / "registry" / "images.py":
                continue
            if re.search(r"\bImage\.open\(|\bimread\(|torchvision\.io", f.read_text()):
                offenders.append(str(f.relative_to(REPO_ROOT)))
    assert not offenders, offenders
