"""Application commands as the client registered them with `tree.sync()`."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ids import Snowflakes

CHAT_INPUT, USER, MESSAGE = 1, 2, 3


def _fill_option(option: dict[str, Any]) -> dict[str, Any]:
    option = dict(option)
    option.setdefault("description", "")
    option.setdefault("name_localizations", None)
    option.setdefault("description_localizations", None)
    if "options" in option:
        option["options"] = [_fill_option(o) for o in option["options"]]
    return option


class CommandRegistry:
    def __init__(self, application_id: int, ids: Snowflakes) -> None:
        self._app = application_id
        self._ids = ids
        # None holds global commands; a guild id holds that guild's.
        self.scopes: dict[int | None, list[dict[str, Any]]] = {}

    def put(self, guild_id: int | None, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Bulk overwrite, keeping ids (and versions when unchanged) of same-named commands."""
        previous = {(c["name"], c["type"]): c for c in self.scopes.get(guild_id, [])}
        stored = []
        for raw in commands:
            cmd = self._echo(raw, guild_id)
            old = previous.get((cmd["name"], cmd["type"]))
            if old is not None:
                cmd["id"] = old["id"]
                same = {k: v for k, v in old.items() if k != "version"} == {
                    k: v for k, v in cmd.items() if k != "version"
                }
                cmd["version"] = old["version"] if same else str(self._ids.next())
            stored.append(cmd)
        self.scopes[guild_id] = stored
        return copy.deepcopy(stored)

    def _echo(self, raw: dict[str, Any], guild_id: int | None) -> dict[str, Any]:
        kind = int(raw.get("type") or CHAT_INPUT)
        cmd: dict[str, Any] = {
            "id": str(self._ids.next()),
            "application_id": str(self._app),
            "version": str(self._ids.next()),
            "type": kind,
            "name": raw["name"],
            "name_localizations": raw.get("name_localizations"),
            "description": raw.get("description", "") if kind == CHAT_INPUT else "",
            "description_localizations": raw.get("description_localizations"),
            "default_member_permissions": raw.get("default_member_permissions"),
            "dm_permission": raw.get("dm_permission", True),
            "nsfw": bool(raw.get("nsfw")),
            "contexts": raw.get("contexts"),
            "integration_types": raw.get("integration_types", [0]),
        }
        if raw.get("options"):
            cmd["options"] = [_fill_option(o) for o in raw["options"]]
        if guild_id is not None:
            cmd["guild_id"] = str(guild_id)
        return cmd

    def get(self, guild_id: int | None) -> list[dict[str, Any]]:
        return copy.deepcopy(self.scopes.get(guild_id, []))

    def find(self, name: str, kind: int, guild_id: int) -> dict[str, Any] | None:
        """The command a member of `guild_id` would pick: guild commands shadow global ones."""
        for scope in (guild_id, None):
            for cmd in self.scopes.get(scope, []):
                if cmd["name"] == name and cmd["type"] == kind:
                    return cmd
        return None

    def names(self, guild_id: int) -> list[str]:
        return [c["name"] for scope in (guild_id, None) for c in self.scopes.get(scope, [])]
