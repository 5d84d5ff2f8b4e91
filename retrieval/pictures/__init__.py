"""Pictures from the outside: downloads from allowed hosts (`fetch`, `origins`), Discord's media
proxy (`media_proxy`), and bytes made into the model's input (`images`)."""

from __future__ import annotations

from retrieval.pictures.fetch import Fetcher
from retrieval.pictures.images import (
    ImageDecodeError,
    ImageError,
    ImageTooLarge,
    NotAnImage,
    PreprocessSpec,
    prepare,
    sniff_image_type,
)
from retrieval.pictures.origins import DISCORD_MEDIA_ORIGINS, MediaOrigins, unsigned

__all__ = [
    "DISCORD_MEDIA_ORIGINS",
    "Fetcher",
    "ImageDecodeError",
    "ImageError",
    "ImageTooLarge",
    "MediaOrigins",
    "NotAnImage",
    "PreprocessSpec",
    "prepare",
    "sniff_image_type",
    "unsigned",
]
