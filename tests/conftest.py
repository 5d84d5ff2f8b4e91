"""Shared fixtures: the tiny CLIP model, databases, and offline mode for the hub."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub: tests never reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH  # noqa: E402


@pytest.fixture(scope="session")
def tiny_encoder():
    """The trained tiny model, loaded through the same code path as a user's local checkpoint."""
    from retrieval.encoder import Encoder

    return Encoder.load(model=str(CONFIG_PATH), pretrained=str(CHECKPOINT_PATH), device="cpu")


@pytest.fixture
async def sqlite_engine(tmp_path):
    from retrieval.db import create_engine, ensure_schema

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/clipfind.db")
    await ensure_schema(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def store(sqlite_engine):
    from retrieval.store import open_store

    store = open_store(sqlite_engine)
    yield store
    await store.close()
