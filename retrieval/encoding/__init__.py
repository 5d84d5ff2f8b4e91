"""Pictures and words made into vectors: the CLIP model (`clip`, the only module importing torch
and open_clip), the one thread that runs it (`service`), the measured precision choice
(`precision`), reading text in pictures (`ocr`) and the normal form of words (`textnorm`).

`Encoder` and the other names of `clip` load on first use, so that what never encodes (the
operator commands, a migration) never imports torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from retrieval.encoding.ocr import OcrEngine, PictureText
from retrieval.encoding.service import EncoderService
from retrieval.encoding.textnorm import compact, normalise, normalise_query

if TYPE_CHECKING:
    from retrieval.encoding.clip import Encoder, locate_weights, resolve_device, resolve_precision

_CLIP = ("Encoder", "locate_weights", "resolve_device", "resolve_precision")

__all__ = [
    "Encoder",
    "EncoderService",
    "OcrEngine",
    "PictureText",
    "compact",
    "locate_weights",
    "normalise",
    "normalise_query",
    "resolve_device",
    "resolve_precision",
]


def __getattr__(name: str) -> object:
    if name in _CLIP:
        return getattr(importlib.import_module("retrieval.encoding.clip"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
