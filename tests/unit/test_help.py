"""`/clipfind help` and the README's command section come from one list (bot/help.py), and that
list names every command the bot declares, with `/find`'s options as the command takes them.
(What Discord is really told, context menus included, is checked end to end in
test_e2e_search_models.py.)"""

from __future__ import annotations

import importlib
import inspect

from discord import app_commands
from discord.ext import commands

from bot.client import EXTENSIONS
from bot.help import (
    BEGIN,
    COMMANDS,
    END,
    FIND,
    FIND_OPTIONS,
    MESSAGE_LIMIT,
    README,
    help_text,
    readme_section,
    with_section,
)

REGENERATE = "run `.venv/bin/python -m bot.help` to write the README's command section"


def declared_commands() -> dict[str, app_commands.Command]:
    """Every slash command the cogs declare, by the name a member types ("/clipfind status")."""
    found: dict[str, app_commands.Command] = {}

    def walk(command: app_commands.Command | app_commands.Group, prefix: str) -> None:
        name = f"{prefix}{command.name}"
        if isinstance(command, app_commands.Group):
            for sub in command.commands:
                walk(sub, f"{name} ")
        else:
            found[name] = command

    for extension in EXTENSIONS:
        for _, cog in inspect.getmembers(importlib.import_module(extension), inspect.isclass):
            if issubclass(cog, commands.Cog) and cog is not commands.Cog:
                for command in cog.__cog_app_commands__:
                    walk(command, "/")
    return found


def test_the_readme_lists_the_commands_as_the_help_does():
    readme = README.read_text(encoding="utf-8")
    assert BEGIN in readme and END in readme, REGENERATE
    assert with_section(readme) == readme, REGENERATE


def test_the_help_is_one_message_that_names_every_command_and_option():
    text = help_text()
    assert len(text) <= MESSAGE_LIMIT, f"the help is {len(text)} characters; Discord takes 2,000"
    for entry in COMMANDS:
        assert entry.command in text
    for option in FIND_OPTIONS:
        for name in option.names:
            assert f"`{name}:`" in text
    assert FIND.example in text


def test_every_declared_slash_command_has_an_entry_and_every_entry_a_command():
    declared = set(declared_commands())
    listed = {entry.command for entry in COMMANDS if not entry.menu}
    assert declared == listed, (
        f"declared but not in bot/help.py: {sorted(declared - listed)}; "
        f"in bot/help.py but not declared: {sorted(listed - declared)}"
    )


def test_finds_options_are_the_ones_the_command_takes():
    taken = [parameter.name for parameter in declared_commands()[FIND.command].parameters]
    listed = [name for option in FIND_OPTIONS for name in option.names]
    assert listed == taken


def test_the_section_is_rewritten_in_place_and_nothing_else_moves():
    stale = f"# clipfind\n\nbefore\n\n{BEGIN}\n| old | table |\n{END}\n\nafter\n"
    written = with_section(stale)
    assert written == f"# clipfind\n\nbefore\n\n{readme_section()}\n\nafter\n"
    assert with_section(written) == written
