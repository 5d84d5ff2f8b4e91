"""scripts/setup.sh installs from scratch, then only again when what it installs could change.

Run in a copy of the repository with `python3` replaced by a stand-in that makes a fake venv whose
`python` records what it was asked (pip installs), so the script's own logic is what is tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    venv_python = tmp_path / "venv-python"
    venv_python.write_text(
        '#!/bin/sh\necho "$*" >> "$SETUP_LOG"\n'
        '[ -z "${PIP_FAILS:-}" ] || case "$*" in *" -e "*) exit 1;; esac\n'
    )
    python3 = fake_bin / "python3"
    python3.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "-m venv" ]; then\n'
        '  echo "venv $3" >> "$SETUP_LOG"; mkdir -p "$3/bin"\n'
        f'  cp "{venv_python}" "$3/bin/python"; exit 0\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    for script in (venv_python, python3):
        script.chmod(0o755)
    return repo


def setup(repo: Path, *args: str, fail_pip: bool = False) -> tuple[int, list[str]]:
    """Run the script; returns its exit status and what it asked of python3 and pip."""
    log = repo.parent / "log"
    log.write_text("")
    env = {
        **os.environ,
        "PATH": f"{repo.parent / 'bin'}:{os.environ['PATH']}",
        "SETUP_LOG": str(log),
        **({"PIP_FAILS": "1"} if fail_pip else {}),
    }
    done = subprocess.run(
        ["bash", "scripts/setup.sh", *args], cwd=repo, env=env, capture_output=True, timeout=60
    )
    return done.returncode, log.read_text().splitlines()


INSTALL = "-m pip install --quiet -e ."
INSTALL_TEST = "-m pip install --quiet -e .[test]"


def test_a_fresh_clone_installs_and_a_second_run_does_nothing(checkout):
    status, asked = setup(checkout)
    assert status == 0
    assert asked == ["venv .venv", "-m pip install --quiet --upgrade pip", INSTALL]
    started = time.monotonic()
    assert setup(checkout) == (0, [])
    assert time.monotonic() - started < 5


def test_the_test_extra_installs_once_and_covers_the_plain_install(checkout):
    assert setup(checkout)[1][-1] == INSTALL
    assert setup(checkout, "test")[1][-1] == INSTALL_TEST
    assert setup(checkout, "test") == (0, [])
    assert setup(checkout) == (0, []), "the test install includes the plain one"


def test_a_changed_dependency_reinstalls_both(checkout):
    setup(checkout, "test")
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"numpy>=1.26",', '"numpy>=2",'))
    assert setup(checkout)[1][-1] == INSTALL
    assert setup(checkout, "test")[1][-1] == INSTALL_TEST, "the test install was not redone"
    assert setup(checkout) == (0, [])


def test_a_failed_install_is_tried_again(checkout):
    status, asked = setup(checkout, fail_pip=True)
    assert status != 0 and asked[-1] == INSTALL
    assert setup(checkout)[1][-1] == INSTALL
    assert setup(checkout) == (0, [])
