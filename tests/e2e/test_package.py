"""The package installs itself: a wheel built from the checkout carries the Alembic history, and
installed into a fresh virtual environment, with no checkout on its path, `python -m bot db
upgrade` creates the schema of a new SQLite database, which `python -m bot check` then reads."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

from alembic.script import ScriptDirectory

from retrieval.database.engine import alembic_config
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH

ROOT = Path(__file__).resolve().parents[2]
# What a build needs of the checkout (the tests and the virtual environment stay behind).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "bot", "retrieval", "migrations")


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel, built from a copy of the checkout: a build in place would leave its build/
    folder in the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("clipfind-*.whl")
    return wheel


def _clean_environment(tmp_path: Path, wheel: Path) -> Path:
    """A virtual environment holding only the wheel; its dependencies come from this test
    environment's site-packages, added as a plain path (so the editable install of the checkout
    there, which a .pth file starts, stays off)."""
    env = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120
    )
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site)]
        + [str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return python


def test_a_wheel_installed_elsewhere_creates_the_schema(tmp_path):
    wheel = _build_wheel(tmp_path)
    shipped = zipfile.ZipFile(wheel).namelist()
    assert "retrieval/migrations/env.py" in shipped
    revisions = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    assert (
        sorted(Path(n).name for n in shipped if n.startswith("retrieval/migrations/versions/"))
        == revisions
    )

    python = _clean_environment(tmp_path, wheel)
    work = tmp_path / "elsewhere"  # the current folder is on a module's path: not the checkout
    work.mkdir()
    # Nothing of this machine's settings: no token (its check must fail), no other database.
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith(("DISCORD_", "CLIP_"))
    }
    database = work / "data" / "clipfind.db"
    environ["DATABASE_URL"] = f"sqlite+aiosqlite:///{database}"

    where = subprocess.run(
        [
            str(python),
            "-c",
            textwrap.dedent(
                """
            import json, sys
            import retrieval, retrieval.database.engine as engine
            print(json.dumps({"path": sys.path, "package": retrieval.__file__,
                              "migrations": str(engine.MIGRATIONS)}))
            """
            ),
        ],
        cwd=work,
        env=environ,
        check=True,
        capture_output=True,
        text=True,
    )
    found = json.loads(where.stdout)
    assert not [p for p in found["path"] if p and Path(p).resolve() == ROOT], found["path"]
    installed = Path(found["package"]).resolve()
    assert not installed.is_relative_to(ROOT), installed
    assert Path(found["migrations"]).resolve() == installed.parent / "migrations"

    for action in ("upgrade", "current"):
        done = subprocess.run(
            [str(python), "-m", "bot", "db", action],
            cwd=work,
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    said = done.stdout + done.stderr
    assert f"schema revision: {head}" in said, said[-2000:]
    # The operator's check reads the same schema (the token is missing: that check fails).
    environ |= {"CLIP_MODEL": str(CONFIG_PATH), "CLIP_PRETRAINED": str(CHECKPOINT_PATH)}
    environ |= {"CLIP_DEVICE": "cpu"}
    checked = subprocess.run(
        [str(python), "-m", "bot", "check"],
        cwd=work,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = {line.split()[1]: line for line in checked.stdout.splitlines() if line.strip()}
    assert lines["database"].startswith("ok") and f"revision {head}" in lines["database"]
    assert lines["model"].startswith("ok"), lines
    assert lines["token"].startswith("FAIL") and checked.returncode == 1
    with sqlite3.connect(database) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert {"images", "index_jobs", "opt_outs", "alembic_version"} <= tables
