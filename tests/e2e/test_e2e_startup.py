"""Start-up as a new operator meets it: cheap checks first, then what to do next.

A token that is missing, malformed or refused, and a Message Content intent left off, must stop
the bot with one sentence before the database is created or the model loaded (which can mean a
600 MB download). Once connected, the bot says how to invite it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from bot import startup
from bot.app import run
from bot.cli import main
from bot.startup import (
    INTENT_REFUSED,
    TOKEN_MALFORMED,
    TOKEN_PREFIXED,
    TOKEN_REFUSED,
    TOKEN_REQUIRED,
)
from retrieval.encoding.clip import Encoder
from tests.fakediscord import FakeDiscord
from tests.helpers import bot_settings, running_bot
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH

pytestmark = pytest.mark.usefixtures("isolated_logging")


@pytest.fixture
def model_loads(monkeypatch) -> list[str]:
    """Records every attempt to load the model (and lets it proceed)."""
    calls: list[str] = []
    real = Encoder.load.__func__

    def spy(cls, **kwargs):
        calls.append(kwargs["model"])
        return real(cls, **kwargs)

    monkeypatch.setattr(Encoder, "load", classmethod(spy))
    return calls


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh checkout's working directory: `.env` as `run.sh` creates it, nothing else."""
    for name in ("DISCORD_TOKEN", "DATABASE_URL", "CLIP_MODEL", "CLIP_PRETRAINED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    env = (Path(__file__).parents[2] / ".env.example").read_text()
    # Only the model is swapped for the tiny one, so nothing could be downloaded anyway.
    env = env.replace("CLIP_MODEL=ViT-B-32", f"CLIP_MODEL={CONFIG_PATH}")
    env = env.replace("CLIP_PRETRAINED=laion2b_s34b_b79k", f"CLIP_PRETRAINED={CHECKPOINT_PATH}")
    (tmp_path / ".env").write_text(env)
    return tmp_path


def critical_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL]


def test_the_shipped_empty_token_stops_at_once(workdir, model_loads, caplog):
    assert "\nDISCORD_TOKEN=\n" in (workdir / ".env").read_text()
    assert main([]) == 2
    (line,) = critical_lines(caplog)
    assert "DISCORD_TOKEN is required" in line and TOKEN_REQUIRED in line
    assert model_loads == []
    assert not (workdir / "data").exists(), "no database is created before the token is known"


@pytest.mark.parametrize(
    "token",
    [
        "123456789012345678",  # the application id
        "Bot MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB",
        "e3b0c44298fc1c149afbf4c8996fb924",  # a client secret
    ],
)
def test_a_malformed_token_stops_at_once(workdir, model_loads, caplog, monkeypatch, token):
    monkeypatch.setenv("DISCORD_TOKEN", token)
    assert main([]) == 2
    (line,) = critical_lines(caplog)
    assert line.endswith(TOKEN_PREFIXED if token.startswith("Bot ") else TOKEN_MALFORMED)
    assert model_loads == []
    assert not (workdir / "data").exists()


def refused_before_anything_heavy(fd: FakeDiscord, db_dir: Path, model_loads: list[str]) -> None:
    assert model_loads == []
    assert not (db_dir / "clipfind.db").exists()
    assert fd.identify_payloads == [], "no gateway connection is attempted"


async def test_a_token_discord_rejects_stops_before_the_model(tmp_path, model_loads, caplog):
    async with FakeDiscord() as fd:
        wrong = fd.token[:-6] + ("AAAAAA" if not fd.token.endswith("AAAAAA") else "BBBBBB")
        status = await run(bot_settings(fd, tmp_path, discord_token=wrong))
        refused_before_anything_heavy(fd, tmp_path, model_loads)
    assert status == 2
    assert critical_lines(caplog) == [TOKEN_REFUSED]


async def test_a_refused_intent_stops_before_the_model(tmp_path, model_loads, caplog):
    async with FakeDiscord(message_content_enabled=False) as fd:
        status = await run(bot_settings(fd, tmp_path))
        refused_before_anything_heavy(fd, tmp_path, model_loads)
    assert status == 2
    assert critical_lines(caplog) == [INTENT_REFUSED]


async def test_unreachable_discord_stops_with_the_address(tmp_path, model_loads, caplog):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with FakeDiscord() as fd:
        base = f"http://127.0.0.1:{port}/api/v10"
        status = await run(bot_settings(fd, tmp_path, discord_api_base=base))
    assert status == 2
    (line,) = critical_lines(caplog)
    assert line.startswith(f"cannot reach Discord at {base}")
    assert model_loads == []


def invite_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "discord.com/oauth2/authorize" in r.getMessage()]


async def test_a_bot_in_no_server_says_so_with_the_invite_link(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with FakeDiscord() as fd, running_bot(bot_settings(fd, tmp_path), fd):
        pass
    (record,) = invite_lines(caplog)
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "in no server yet" in message
    # Exactly what the bot needs: View Channels + Read Message History, and its commands.
    assert message.endswith(
        f"https://discord.com/oauth2/authorize?client_id={fd.application_id}"
        "&scope=bot+applications.commands&permissions=66560"
    )


async def test_a_bot_in_a_server_logs_the_invite_link_quietly(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with FakeDiscord() as fd:
        fd.add_guild("Shapes club")
        async with running_bot(bot_settings(fd, tmp_path), fd):
            pass
    (record,) = invite_lines(caplog)
    assert record.levelno == logging.INFO
    assert "in no server" not in record.getMessage()
    assert f"client_id={fd.application_id}&" in record.getMessage()


async def test_a_discord_that_never_answers_stops_in_bounded_time(
    tmp_path, model_loads, caplog, monkeypatch
):
    monkeypatch.setattr(startup, "LOGIN_TIMEOUT_S", 0.5)

    async def silent(reader, writer):
        await reader.read()  # accepts, reads, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, FakeDiscord() as fd:
        base = f"http://127.0.0.1:{port}/api/v10"
        status = await asyncio.wait_for(run(bot_settings(fd, tmp_path, discord_api_base=base)), 10)
    assert status == 2
    (line,) = critical_lines(caplog)
    assert line.startswith(f"cannot reach Discord at {base}: no answer in 0.5 s")
    assert model_loads == []


async def test_auto_precision_is_measured_at_the_first_start_only(tmp_path, monkeypatch, caplog):
    """On a CPU with native bf16 the bot times both precisions at its first start and keeps
    the answer in CACHE_DIR, keyed by the batch size it runs; the next start reads it back."""
    import json

    import retrieval.encoding.clip as encoder_module

    monkeypatch.setattr(encoder_module, "_cpu_has_native_bf16", lambda: True)
    caplog.set_level(logging.INFO, logger="retrieval.encoding.clip")
    cache = tmp_path / "cache"
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, cache_dir=cache, batch_size=4)
        assert settings.precision_cache() == cache / "precision.json"
        async with running_bot(settings, fd) as bot:
            first = bot.encoder.encoder.precision
        (entry,) = json.loads((cache / "precision.json").read_text())["entries"].values()
        assert entry["key"]["batch_size"] == 4 and entry["choice"] == first
        assert entry["key"]["model_id"].startswith("tiny-clip/")
        assert "measured now" in caplog.text
        caplog.clear()
        async with running_bot(settings, fd) as bot:
            assert bot.encoder.encoder.precision == first
        assert "cached" in caplog.text and "measured now" not in caplog.text
