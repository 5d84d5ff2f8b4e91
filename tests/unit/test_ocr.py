"""The OCR engine on the pictures people post: real models, rendered captions, hostile bytes."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from retrieval.encoding.ocr import OcrEngine, PictureText, text_resolution
from retrieval.pictures.images import ImageDecodeError, ImageTooLarge, NotAnImage
from tests.textimages import caption_sample, load_font, missing_fonts, terminal_sample

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    bool(missing_fonts()),
    reason=f"fonts {missing_fonts()} missing: scripts/setup.sh test installs them with apt",
)


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    engine = OcrEngine()
    engine.load()
    return engine


def test_reads_an_english_caption(engine):
    sample = caption_sample(["Deploy failed on Friday"], size=20, background="noisy", seed=1)
    picture = engine.read_bytes(sample.data)
    assert isinstance(picture, PictureText)
    assert "deploy failed on friday" in picture.text
    assert picture.model_id == engine.model_id and "PP-OCRv6" in picture.model_id
    assert all(engine.min_confidence <= line.confidence <= 1.0 for line in picture.lines)
    assert any(line.raw != line.text for line in picture.lines)  # kept as read, and folded


def test_reads_a_meme_caption_outlined_on_a_noisy_background(engine):
    sample = caption_sample(
        ["one does not simply", "merge on friday"],
        style="meme",
        background="noisy",
        size=36,
        angle=4.0,
        seed=2,
    )
    text = engine.read_bytes(sample.data).text
    assert "one does not simply" in text
    assert "merge on friday" in text


def test_reads_a_terminal_screenshot(engine):
    sample = terminal_sample("connection refused by upstream", size=14, seed=3)
    assert sample.width >= 1024
    text = engine.read_bytes(sample.data).text
    assert "connection refused by upstream" in text
    assert "git status" in text  # the rest of the screen is read too


def test_reads_a_chinese_caption(engine):
    sample = caption_sample(["周五部署失败了"], script="han", size=28, background="photo", seed=4)
    assert "周五部署失败" in engine.read_bytes(sample.data).text


def test_boxes_are_in_the_pictures_own_pixels_when_it_is_read_smaller():
    # 3000 px wide, read at 1000: the box must come back where the word is in the original.
    canvas = Image.new("RGB", (3000, 600), "white")
    ImageDraw.Draw(canvas).text(
        (2000, 250), "WEEKEND", font=load_font("dejavu-sans", 90), fill="black"
    )
    small = OcrEngine(detect_side=640, read_side=1000)
    lines = small.read(canvas)
    assert [line.text for line in lines] == ["weekend"]
    xs = [x for x, _ in lines[0].box]
    ys = [y for _, y in lines[0].box]
    assert 1900 < min(xs) < 2050 and 2300 < max(xs) < 2500
    assert 200 < min(ys) < 300 and 300 < max(ys) < 400


def test_text_resolution_caps_the_long_side_and_never_enlarges():
    assert text_resolution(Image.new("RGB", (4000, 1000)), max_side=1280).size == (1280, 320)
    assert text_resolution(Image.new("RGB", (500, 900)), max_side=1280).size == (500, 900)
    assert text_resolution(Image.new("L", (10, 10)), max_side=1280).mode == "RGB"


def test_two_threads_wait_for_each_other_and_read_the_same(engine):
    sample = caption_sample(["kitchen timber valley"], size=24, seed=5)
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(engine.read_bytes, [sample.data, sample.data])
    assert first == second
    assert "kitchen timber valley" in first.text


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_decompression_bomb_is_refused_before_it_is_decoded(engine):
    bomb = _png(Image.new("1", (12_000, 10_000)))  # 120 MP in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge):
        engine.read_bytes(bomb)
    with pytest.raises(ImageTooLarge):
        engine.read_bytes(caption_sample(["big"], size=20).data, max_bytes=1_000)


def test_truncated_and_foreign_bytes_get_typed_errors(engine):
    data = caption_sample(["truncated upload"], size=20, background="photo", seed=6).data
    with pytest.raises(ImageDecodeError):
        engine.read_bytes(data[: len(data) // 2])
    with pytest.raises(NotAnImage):
        engine.read_bytes(b"%PDF-1.7 not a picture")
    with pytest.raises(NotAnImage):
        engine.read_bytes(b"")


def test_settings_are_checked_when_the_engine_is_made():
    for bad in (
        {"threads": 0},
        {"detect_side": 16},
        {"detect_side": 2000, "read_side": 1000},
        {"min_confidence": 1.5},
        {"box_threshold": 0.0},
        {"device": "tpu"},
    ):
        with pytest.raises(ValueError):
            OcrEngine(**bad)


def test_the_engine_loads_lazily_and_reads_without_network():
    # Any socket use (a model or font download) fails this child process loudly.
    script = textwrap.dedent(
        """
        import sys

        NETWORK = {
            "socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto",
            "urllib.Request",
        }

        def no_network(event, args):
            if event in NETWORK:
                raise RuntimeError(f"network used: {event} {args}")

        sys.addaudithook(no_network)
        from retrieval.encoding.ocr import OcrEngine
        from tests.textimages import caption_sample

        engine = OcrEngine()
        # Made, not loaded: a process that never reads pays nothing for OCR.
        assert not {"rapidocr", "onnxruntime", "cv2"} & set(sys.modules), sys.modules.keys()
        picture = engine.read_bytes(caption_sample(["offline reading works"], size=24).data)
        assert "offline reading works" in picture.text, picture
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_only_the_ocr_module_imports_the_ocr_engine():
    # As only retrieval/encoding/clip.py imports torch: the engine's packages stay behind one
    # module.
    engine_import = re.compile(r"^\s*(from|import)\s+(rapidocr|onnxruntime|cv2)\b", re.MULTILINE)
    importers = sorted(
        str(path.relative_to(ROOT))
        for folder in ("retrieval", "bot")
        for path in (ROOT / folder).rglob("*.py")
        if engine_import.search(path.read_text())
    )
    assert importers == ["retrieval/encoding/ocr.py"]
