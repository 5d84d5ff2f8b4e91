"""EXPLAIN's plan of a statement, read the same way on PostgreSQL and on Citus.

On Citus, a statement on a distributed (or coordinator) table plans as a `Custom Scan (Citus
Adaptive)`; the scans and indexes are in each shard's own plan (a task's "Remote Plan"), shown
for every task with `citus.explain_all_tasks`. Here those plans become the Custom Scan's
children, and a shard's table and index names read as their table's (`images_102008` as
`images`), so a test asks the same questions of both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from datetime import date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from retrieval.database.citus import CITUS_VERSION

_PLACEHOLDER = re.compile(r"\$(\d+)\b")


async def plan_of(
    conn: AsyncConnection, sql: str, parameters: Sequence = (), *, analyze: bool = False
) -> dict:
    """The root plan node of `EXPLAIN (FORMAT JSON) sql` (run, with ``analyze``); `$n`
    placeholders take the values.

    The values are written into the statement: Citus cannot plan some statements whose
    parameters are left to EXPLAIN ("could not create distributed plan"), and the planner sees
    the same values either way.
    """
    citus = await conn.scalar(CITUS_VERSION) is not None
    if citus:
        await conn.execute(text("SELECT set_config('citus.explain_all_tasks', 'on', true)"))
    explain = f"EXPLAIN ({'ANALYZE, ' if analyze else ''}FORMAT JSON) " + inline(sql, parameters)
    value = (await conn.exec_driver_sql(explain)).scalar()
    # SQLAlchemy's asyncpg set-up may decode json itself.
    (document,) = json.loads(value) if isinstance(value, str) else value
    plan = document["Plan"]
    if citus:
        shards = (await conn.execute(text("SELECT shardid FROM pg_dist_shard"))).scalars()
        _unshard(plan, suffixes=tuple(f"_{shard}" for shard in shards))
    return plan


def nodes(plan: dict) -> Iterator[dict]:
    """The node and every node below it."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def scans_of_images(plan: dict) -> list[dict]:
    """Every node of the plan that reads the images table."""
    return [node for node in nodes(plan) if node.get("Relation Name") == "images"]


def inline(sql: str, parameters: Sequence) -> str:
    """The statement with each `$n` replaced by its value as a literal (the statements compiled
    by SQLAlchemy cast every placeholder, `$1::BIGINT`, so a quoted text literal takes the type)."""
    return _PLACEHOLDER.sub(lambda m: _literal(parameters[int(m.group(1)) - 1]), sql)


def _literal(value) -> str:
    if value is None:
        return "NULL"
    return "'" + _text(value).replace("'", "''") + "'"


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "{" + ",".join(_element(v) for v in value) + "}"
    return str(value)


def _element(value) -> str:
    if value is None:
        return "NULL"
    return '"' + _text(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unshard(plan: dict, *, suffixes: tuple[str, ...]) -> None:
    for part in ("Distributed Query", "Select Query"):  # the latter: INSERT ... SELECT's
        if part in plan:
            plan["Plans"] = plan.get("Plans", []) + list(_remote_plans(plan[part]))
    for key in ("Relation Name", "Index Name"):
        name = plan.get(key)
        if name is not None:
            plan[key] = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
    for child in plan.get("Plans", []):
        _unshard(child, suffixes=suffixes)


def _remote_plans(part) -> Iterator[dict]:
    # The tasks' plans (and any subplan's) sit at varying depths of Citus's JSON.
    if isinstance(part, dict):
        if "Plan" in part:
            yield part["Plan"]
            return
        part = list(part.values())
    if isinstance(part, list):
        for item in part:
            yield from _remote_plans(item)
