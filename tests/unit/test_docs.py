"""The docs stay true to the code they describe: every setting is in `.env.example` and in
docs/configuration.md, the README stays short, and no link points at nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from retrieval.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MOST_LINES = 200
# `NAME=value` in .env.example, set or commented out ("# NAME=").
_ENV_LINE = re.compile(r"^#? ?([A-Z][A-Z0-9_]*)=", re.MULTILINE)
# A setting's row in a table of docs/configuration.md: "| `NAME` | default | ... |".
_SETTING_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \|", re.MULTILINE)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def settings() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def test_every_setting_is_in_env_example_and_nothing_else_is():
    listed = set(_ENV_LINE.findall((ROOT / ".env.example").read_text(encoding="utf-8")))
    assert settings() - listed == set(), "settings missing from .env.example"
    assert listed - settings() == set(), ".env.example names settings the code does not read"


def test_every_setting_has_its_row_in_the_configuration_doc():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = _SETTING_ROW.findall(text)
    assert settings() - set(rows) == set(), "settings missing from docs/configuration.md"
    assert set(rows) - settings() == set(), "docs/configuration.md names settings the code lacks"
    assert len(rows) == len(set(rows)), "a setting has two rows"


def test_the_readme_is_short_and_its_two_commands_exist():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MOST_LINES
    for script in ("scripts/run.sh", "scripts/test.sh"):
        assert f"./{script}" in text
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_leads_somewhere(page: Path):
    broken = []
    for target in _LINK.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:: not ours to check offline
        file, _, anchor = target.partition("#")
        where = (page.parent / file).resolve() if file else page
        if not where.exists() or (
            anchor and where.suffix == ".md" and anchor not in _anchors(where)
        ):
            broken.append(target)
    assert not broken, f"{page.name} links to what is not there: {broken}"


def test_every_benchmark_the_docs_name_exists():
    named = set()
    for page in (README, *DOCS):
        text = page.read_text(encoding="utf-8")
        named |= set(re.findall(r"python -m benchmarks\.(\w+)", text))
        named |= {Path(p).stem for p in re.findall(r"benchmarks/(\w+)\.py", text)}
    missing = sorted(n for n in named if not (ROOT / "benchmarks" / f"{n}.py").exists())
    assert not missing


# A path of the project in backticks: `retrieval/store/allowed.py`, `bot/cogs/`, `tests/unit/`.
_PATH = re.compile(r"`((?:bot|retrieval|tests|scripts|migrations|benchmarks)/[\w./-]*)`")
# A row of a table whose first cell is a folder; the files it names in backticks live there.
_FOLDER_ROW = re.compile(r"^\| `((?:bot|retrieval)/[\w/]*/)` \|(.*)$", re.MULTILINE)


def test_every_path_the_docs_cite_exists():
    cited: dict[str, set[str]] = {}
    for page in (README, *DOCS):
        text = page.read_text(encoding="utf-8")
        for path in _PATH.findall(text):
            cited.setdefault(path, set()).add(page.name)
        for folder, rest in _FOLDER_ROW.findall(text):
            for name in re.findall(r"`(\w+\.py)`", rest):
                cited.setdefault(folder + name, set()).add(page.name)
    missing = {path: sorted(pages) for path, pages in cited.items() if not (ROOT / path).exists()}
    assert not missing, f"the docs cite paths that do not exist: {missing}"
