"""`python -m bot check`: one line per check, the fix with each failure, nothing created."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from bot.check import run_checks
from bot.cli import main
from bot.startup import INTENT_REFUSED, TOKEN_REFUSED, TOKEN_REQUIRED
from retrieval.database.engine import UPGRADE_HINT, alembic_config, create_engine, upgrade
from tests.fakediscord import FakeDiscord
from tests.helpers import bot_settings
from tests.hubcache import cache_weights
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH

pytestmark = pytest.mark.usefixtures("isolated_logging")

ROOT = Path(__file__).resolve().parents[2]


def verdicts(lines: list[str]) -> dict[str, tuple[str, str]]:
    """{check: (ok | FAIL, detail)} from the printed lines."""
    out = {}
    for line in lines:
        verdict, name, detail = line.split(maxsplit=2)
        out[name] = (verdict, detail)
    return out


def test_a_fresh_checkout_is_told_what_is_missing(tmp_path, monkeypatch, capsys):
    for name in ("DISCORD_TOKEN", "DATABASE_URL", "CLIP_MODEL", "CLIP_PRETRAINED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())

    assert main(["check"]) == 1
    got = verdicts(capsys.readouterr().out.splitlines())
    assert list(got) == ["settings", "token", "database", "model", "discord"]
    assert got["settings"][0] == "ok"
    assert got["token"] == ("FAIL", TOKEN_REQUIRED)
    assert got["database"] == (
        "ok",
        "SQLite file data/clipfind.db does not exist yet: it is created on first start",
    )
    # HF_HUB_OFFLINE=1 in tests: the default weights cannot be had, and the line says the fix.
    assert got["model"][0] == "FAIL" and "CLIP_PRETRAINED to a local checkpoint" in got["model"][1]
    assert got["discord"] == ("FAIL", "not asked: fix DISCORD_TOKEN first")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"], "check creates nothing"


def test_invalid_settings_fail_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIP_DEVICE", "gpu")
    assert main(["check"]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("FAIL  settings  invalid settings:") and "CLIP_DEVICE" in line


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (
            {"OCR": "off", "WORKER_LANES": "ocr"},
            "WORKER_LANES=ocr takes only the OCR lane, and OCR",
        ),
        ({"WORKER_LANES": "ocr"}, "WORKER_LANES=ocr leaves encoding to other processes"),
    ],
)
def test_lanes_that_leave_nothing_to_do_fail(tmp_path, monkeypatch, capsys, settings, said):
    """A process told to take no job, or a lone SQLite bot that leaves the vectors to no one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/clipfind.db")
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert main(["check"]) == 1
    got = verdicts(capsys.readouterr().out.splitlines())
    failed = [detail for verdict, detail in got.values() if verdict == "FAIL"]
    assert [detail for detail in failed if said in detail], got


async def test_a_working_configuration_passes_every_check(tmp_path):
    """The real command in its own process, against the stand-in, as an operator runs it."""
    async with FakeDiscord() as fd:
        env = {
            **os.environ,
            "DISCORD_TOKEN": fd.token,
            "DISCORD_API_BASE": fd.api_base,
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/clipfind.db",
            "CLIP_MODEL": str(CONFIG_PATH),
            "CLIP_PRETRAINED": str(CHECKPOINT_PATH),
            "CLIP_DEVICE": "cpu",
            "PYTHONPATH": str(ROOT),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "check",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, (out + err).decode()
    got = verdicts(out.decode().splitlines())
    assert {verdict for verdict, _ in got.values()} == {"ok"}
    assert got["model"][1] == (
        f"tiny-clip from the checkpoint {CHECKPOINT_PATH} (4.8 MB); runs on cpu in "
        f"{got['model'][1].rsplit(' ', 1)[1]}"
    )
    app = fd.application_id
    assert got["discord"][1].startswith(f"token accepted for clipfind (application {app})")
    assert got["discord"][1].endswith(
        f"in no server yet: invite it with https://discord.com/oauth2/authorize?client_id="
        f"{fd.application_id}&scope=bot+applications.commands&permissions=66560"
    )
    assert not (tmp_path / "clipfind.db").exists()
    assert not err.strip(), "standard error stays quiet when all is well"


@pytest.mark.parametrize(
    ("fake", "token_change", "expected"),
    [({}, True, TOKEN_REFUSED), ({"message_content_enabled": False}, False, INTENT_REFUSED)],
)
async def test_discord_refusals_fail_the_discord_check(tmp_path, fake, token_change, expected):
    async with FakeDiscord(**fake) as fd:
        token = fd.token[:-4] + ("AAAA" if fd.token[-4:] != "AAAA" else "BBBB")
        settings = bot_settings(fd, tmp_path, **({"discord_token": token} if token_change else {}))
        got = {o.name: o for o in await run_checks(settings)}
    assert (got["discord"].ok, got["discord"].detail) == (False, expected)
    assert got["token"].ok and got["model"].ok and got["database"].ok


async def test_database_and_cached_model_checks(tmp_path, monkeypatch):
    async with FakeDiscord() as fd:
        fd.add_guild("Shapes club")
        settings = bot_settings(fd, tmp_path)
        engine = create_engine(settings.database_url)
        try:
            url = engine.url.render_as_string(hide_password=False)
            await upgrade(engine, ScriptDirectory.from_config(alembic_config(url)).get_base())
            behind = {o.name: o for o in await run_checks(settings)}
            await upgrade(engine)
        finally:
            await engine.dispose()
        cached = cache_weights(
            monkeypatch,
            tmp_path / "hub",
            model="ViT-B-32",
            tag="laion2b_s34b_b79k",
            data=b"w" * 1_500_000,
        )
        settings = bot_settings(
            fd, tmp_path, clip_model="ViT-B-32", clip_pretrained="laion2b_s34b_b79k"
        )
        current = {o.name: o for o in await run_checks(settings)}
    assert not behind["database"].ok and f"run `{UPGRADE_HINT}`" in behind["database"].detail
    assert current["database"].ok and "at schema revision" in current["database"].detail
    assert current["model"].ok
    assert current["model"].detail.startswith(
        f"ViT-B-32/laion2b_s34b_b79k, cached in {cached} (1.5 MB)"
    )
    assert current["discord"].detail.endswith("intent on; in 1 server(s)")
