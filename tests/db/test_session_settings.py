"""Settings for a statement are set for its transaction only (`SET LOCAL`, `set_config(..., true)`):
a session-wide `SET` would outlive the transaction on a pooled connection, and on Citus on the
connections the coordinator keeps to each worker, changing later statements nobody meant it for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A session-wide SET (not LOCAL, not an UPDATE's SET clause), or set_config(..., false). SQL here
# is written in capitals; prose ("...; set MATRIX_MEMORY_MB to...") is not.
SESSION_SET = re.compile(r"(^|;)\s*SET\s+(?!LOCAL\b)(SESSION\s+)?[\w.]+\s*(=|TO\b)")
SESSION_CONFIG = re.compile(r"set_config\([^()]*,\s*false\s*\)", re.I)


def _strings(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def session_settings(paths) -> list[str]:
    found = []
    for path in paths:
        for line, value in _strings(path):
            if SESSION_SET.search(value) or SESSION_CONFIG.search(value):
                found.append(f"{path.relative_to(ROOT)}:{line}: {value.strip()[:80]}")
    return found


# The one exception: an index build runs outside any transaction (CREATE INDEX CONCURRENTLY
# cannot run in one), so its memory can only be set for the session; it is RESET before the
# connection goes back to the pool.
ALLOWED = ("retrieval/store/pgindex.py", "set_config('maintenance_work_mem'")


def test_the_code_sets_nothing_for_a_whole_session():
    code = [p for package in ("retrieval", "bot") for p in (ROOT / package).rglob("*.py")]
    found = session_settings(code)
    assert [f for f in found if not (f.startswith(ALLOWED[0]) and ALLOWED[1] in f)] == []


def test_the_check_finds_session_settings(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.db.test_session_settings.ROOT", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text(
        "A = 'SET hnsw.ef_search = 100'\n"
        "B = \"SELECT set_config('hnsw.ef_search', '100', false)\"\n"
        "C = 'SET LOCAL hnsw.ef_search = 100'\n"
        "D = 'UPDATE index_jobs SET retry_at = now()'\n"
        "E = \"SELECT set_config('plan_cache_mode', 'force_custom_plan', true)\"\n"
    )
    assert [line.split(":")[1] for line in session_settings([bad])] == ["1", "2"]
