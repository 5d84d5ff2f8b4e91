"""Words read from pictures: RapidOCR's PP-OCR models on onnxruntime.

The only module that imports rapidocr and onnxruntime, as `retrieval/encoding/clip.py` is the only
one that imports torch. The models ship inside the ``rapidocr`` wheel (PP-OCRv6 small detection and
recognition, the PP-OCR text orientation classifier) and are loaded from there by path, so
reading works offline from the first start and never reaches rapidocr's download code.

Detection runs at the resolution text needs, not CLIP's 224 px: the picture goes to the text
detector with its long side capped at ``detect_side``, and each line it finds is cut for the
recognizer from the picture at up to ``read_side``, so small text keeps the pixels it has.
Reading is CPU-heavy (half a second of CPU per picture on average, seconds for a screen full of
text: recognition runs per line); ``threads`` says how many cores one reading may use, so OCR
beside the CLIP encoder on a small machine takes one core, not all. OpenCV's thread count is
process-wide: loading the engine sets it to ``threads`` (nothing else here uses OpenCV).

On a GPU: install ``onnxruntime-gpu`` instead of ``onnxruntime`` (they provide the same module
and must not be installed together) and pass ``device="cuda"`` (or ``"auto"``): the sessions
then run on onnxruntime's CUDA execution provider, with its CPU provider as fallback.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.encoding.textnorm import normalise
from retrieval.errors import ClipfindError, ModelUnavailable
from retrieval.pictures.images import decode_image

# Chosen on benchmarks/ocr_quality.py's generated set (benchmarks/RESULTS.md, "Words inside
# pictures"). The detector finds more text at 960 px than at 1280 or 1600, for 0.76x the CPU of
# 1280; 736 loses small text. A box threshold of 0.3 (rapidocr's default 0.5) finds captions on
# large plain areas that 0.5 misses; the junk lines it adds score low, and a confidence of 0.7
# drops three quarters of them while every caption line read scored 0.8 or more. READ_SIDE bounds
# the picture lines are cut from (memory; recognition cost does not grow with it).
DETECT_SIDE = 960
READ_SIDE = 2560
MIN_CONFIDENCE = 0.7
BOX_THRESHOLD = 0.3
DEVICES = ("cpu", "cuda", "auto")


class OcrError(ClipfindError):
    """The OCR engine failed on a picture it was given (not the picture's fault)."""

    reason = "ocr_failed"


@dataclass(frozen=True)
class OcrModels:
    """The three ONNX files of a PP-OCR pipeline; the recognizer carries its own alphabet."""

    detect: Path
    recognise: Path
    orientation: Path
    name: str  # part of the model id stored with the text, so a change of model is visible

    @classmethod
    def bundled(cls) -> OcrModels:
        """The models the rapidocr wheel carries: PP-OCRv6 small (found without importing it)."""
        spec = importlib.util.find_spec("rapidocr")
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable("OCR needs the rapidocr package (pip install rapidocr)")
        models = Path(spec.submodule_search_locations[0]) / "models"
        return cls(
            detect=models / "PP-OCRv6_det_small.onnx",
            recognise=models / "PP-OCRv6_rec_small.onnx",
            orientation=models / "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
            name=f"rapidocr-{importlib.metadata.version('rapidocr')}/PP-OCRv6-small",
        )


@dataclass(frozen=True)
class TextLine:
    """One line of text found in a picture."""

    text: str  # normalised (retrieval/encoding/textnorm.py); what is stored and searched
    raw: str  # as the recognizer read it
    confidence: float  # the recognizer's, 0..1
    box: tuple[tuple[float, float], ...]  # four corners, in the upright picture's pixels


@dataclass(frozen=True)
class PictureText:
    """All the text of one picture, in reading order, and the model that read it."""

    lines: tuple[TextLine, ...]
    model_id: str

    @property
    def text(self) -> str:
        """The normalised lines, one per line of the result."""
        return "\n".join(line.text for line in self.lines)


def text_resolution(image: Image.Image, *, max_side: int) -> Image.Image:
    """The picture with its long side at most ``max_side`` (never enlarged), in RGB."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    long_side = max(image.size)
    if long_side <= max_side:
        return image
    scale = max_side / long_side
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Box-filtered (reducing_gap) then Lanczos: text strokes stay sharp, cost stays low.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _use_cuda(device: str) -> bool:
    """Whether to ask onnxruntime for its CUDA execution provider."""
    if device == "cpu":
        return False
    import onnxruntime

    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise ModelUnavailable(
            "OCR on cuda needs onnxruntime-gpu (pip uninstall onnxruntime; pip install "
            f"onnxruntime-gpu); this onnxruntime has {onnxruntime.get_available_providers()}"
        )
    return has_cuda


class OcrEngine:
    """Reads the text of pictures. Loads its models once, on first use (or `load`).

    Thread-safe, one reading at a time: meant to be owned by one executor thread, as the CLIP
    encoder is; a second thread calling `read` waits for the first.
    """

    def __init__(
        self,
        *,
        threads: int = 1,
        detect_side: int = DETECT_SIDE,
        read_side: int = READ_SIDE,
        min_confidence: float = MIN_CONFIDENCE,
        device: str = "cpu",
        use_orientation: bool = True,
        box_threshold: float = BOX_THRESHOLD,
        models: OcrModels | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        if not 32 <= detect_side <= read_side:
            raise ValueError(f"need 32 <= detect_side <= read_side, not {detect_side}, {read_side}")
        if not (0.0 <= min_confidence <= 1.0 and 0.0 < box_threshold <= 1.0):
            raise ValueError(
                f"need min_confidence in [0, 1] and box_threshold in (0, 1], not "
                f"{min_confidence}, {box_threshold}"
            )
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
        self.threads = threads
        self.detect_side = detect_side
        self.read_side = read_side
        self.min_confidence = min_confidence
        self.device = device
        self.use_orientation = use_orientation
        self.box_threshold = box_threshold
        self.models = models or OcrModels.bundled()
        self.model_id = self.models.name
        self._engine = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the models now (the first `read` does otherwise); idempotent."""
        with self._lock:
            self._load_locked()

    def _load_locked(self):
        if self._engine is not None:
            return self._engine
        try:
            import cv2
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise ModelUnavailable(f"OCR needs the rapidocr package: {exc}") from exc
        models = self.models
        use_cuda = _use_cuda(self.device)
        params = {
            "Global.log_level": "critical",  # its own stderr handler; our errors are typed
            "Global.text_score": 0.0,  # _lines drops what is under min_confidence
            "Global.use_cls": self.use_orientation,
            # Our own resize (text_resolution) already capped the picture; theirs is off.
            "Global.max_side_len": self.read_side,
            "Global.min_side_len": 32,
            "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            "EngineConfig.onnxruntime.use_cuda": use_cuda,
            "Det.model_path": str(models.detect),
            "Det.limit_type": "max",
            "Det.limit_side_len": self.detect_side,
            "Det.box_thresh": self.box_threshold,
            "Det.thresh": min(0.3, self.box_threshold),
            "Rec.model_path": str(models.recognise),
            "Cls.model_path": str(models.orientation),
        }
        try:
            engine = RapidOCR(params=params)
            # The first call builds the sessions; an unreadable model fails here, not later.
            engine(np.full((32, 32, 3), 255, dtype=np.uint8))
        except Exception as exc:
            raise ModelUnavailable(f"could not load the OCR models {models}: {exc}") from exc
        # OpenCV (crops, resizes) would otherwise start a thread per core for each call.
        cv2.setNumThreads(self.threads)
        self._engine = engine
        return engine

    def read(self, image: Image.Image) -> list[TextLine]:
        """The lines of text in an upright RGB picture, confident ones only, in reading order."""
        pixels = np.asarray(text_resolution(image, max_side=self.read_side))[:, :, ::-1]
        with self._lock:
            engine = self._load_locked()
            try:
                result = engine(np.ascontiguousarray(pixels))
            except Exception as exc:
                raise OcrError(
                    f"OCR failed on a {image.width}x{image.height} picture: {exc}"
                ) from exc
        if result.txts is None or result.boxes is None:
            return []
        scale = max(image.size) / max(pixels.shape[:2])
        return _lines(result.txts, result.scores, result.boxes, scale, self.min_confidence)

    def read_bytes(
        self, data: bytes, *, max_pixels: int = 50_000_000, max_bytes: int | None = None
    ) -> PictureText:
        """Decode image bytes (as the CLIP path does: caps, EXIF, first frame) and read them.

        Raises the typed errors of `retrieval.pictures.images` (`ImageTooLarge`, `ImageDecodeError`,
        `NotAnImage`) for bytes that are not a picture we take, `OcrError` for a reading failure.
        """
        image = decode_image(
            data, target_side=self.read_side, max_pixels=max_pixels, max_bytes=max_bytes
        )
        return PictureText(lines=tuple(self.read(image)), model_id=self.model_id)


def _lines(
    texts: Sequence[str],
    scores: Sequence[float],
    boxes: np.ndarray,
    scale: float,
    min_confidence: float,
) -> list[TextLine]:
    lines = []
    for raw, score, box in zip(texts, scores, boxes, strict=True):
        text = normalise(raw)
        if not text or score < min_confidence:
            continue
        corners = tuple((float(x) * scale, float(y) * scale) for x, y in box)
        lines.append(TextLine(text=text, raw=raw, confidence=float(score), box=corners))
    return lines
