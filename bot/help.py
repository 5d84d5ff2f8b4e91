"""The commands as members read about them, written once: what each does and one example.

`/clipfind help` and the README's command section are both rendered from these entries, so
they cannot tell members different things. ``python -m bot.help`` writes the README's section
again after an entry changed; `tests/unit/test_help.py` fails while the README's section
differs, while a command the bot registers has no entry here (or an entry names no command), and
while `/find`'s options here are not the command's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
# The README's command section lies between these lines; everything between them is generated.
BEGIN = "<!-- commands: written by `python -m bot.help` from bot/help.py; edit them there -->"
END = "<!-- end of commands -->"
# Discord refuses a message longer than this; the help is one message.
MESSAGE_LIMIT = 2000


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]  # options that read the same, like after: and before:
    does: str


@dataclass(frozen=True)
class Entry:
    command: str  # as a member finds it: "/privacy opt-out", or a message menu item's name
    does: str  # one line, for the member
    example: str  # one use as typed; for a menu item, where to find it
    who: str = ""  # who may use it, where not every member may
    menu: bool = False  # a message's Apps menu item, not a slash command


FIND = Entry(
    command="/find",
    does="the images that best match what you describe, best first",
    example="/find query: whiteboard sketch channel: #design after: 2w sort: newest",
)
FIND_OPTIONS = (
    Option(
        ("query",),
        'what the picture shows or says, e.g. `a dog asleep on a sofa`; `"quoted words"` must be '
        "in its text, `-word` leaves out those that say it",
    ),
    Option(("channel",), "only one channel, category or thread (a channel includes its threads)"),
    Option(("author",), "only the images one member posted"),
    Option(
        ("after", "before"),
        "a date (`2025-03-01`, UTC) or how long ago: `7d`, `2w`, `3mo`, `yesterday`",
    ),
    Option(
        ("sort",),
        "`relevance` (best match first), `newest` or `oldest` (by date, among the good matches)",
    ),
    Option(("count",), "results per page, up to 10; ◀️ ▶️ page through up to 100"),
    Option(("image",), "search with a picture instead of words"),
    Option(("public",), "post the answer in the channel (otherwise only you see it)"),
)
SIMILAR = Entry(
    command="Find similar images",
    does="images that look like a message's (first) image",
    example="right-click (or long-press) a message with an image → Apps → Find similar images",
    menu=True,
)
OTHERS = (
    Entry(
        "/privacy opt-out",
        "stop indexing your images in every server, and delete those indexed (you confirm)",
        "/privacy opt-out",
    ),
    Entry("/privacy opt-in", "index the images you post again, from now on", "/privacy opt-in"),
    Entry(
        "/privacy status", "how many of your images are stored; opted out or not", "/privacy status"
    ),
    Entry(
        "/clipfind status",
        "what is indexed in this server and what waits (managers: which channels I can't read)",
        "/clipfind status",
    ),
    Entry("/clipfind help", "every command explained, with examples", "/clipfind help"),
    Entry(
        "/clipfind channels exclude",
        "stop indexing a channel or thread you can read, and delete what was indexed there",
        "/clipfind channels exclude channel: #memes",
        who="Manage Server",
    ),
    Entry(
        "/clipfind channels include",
        "index an excluded channel again, its history included",
        "/clipfind channels include channel: #memes",
        who="Manage Server",
    ),
    Entry(
        "/clipfind channels list",
        "the channels not indexed here",
        "/clipfind channels list",
        who="Manage Server",
    ),
)
COMMANDS = (FIND, SIMILAR, *OTHERS)

_WHO_SEES = (
    "You only see images from channels and threads you can read right now, and images from "
    "age-restricted channels only when you search in one. A picture posted several times shows "
    'once, marked "+N reposts" with a link to the earliest.'
)


def _option(option: Option) -> str:
    names = " / ".join(f"`{name}:`" for name in option.names)
    return f"- {names} {option.does}"


def help_text() -> str:
    """`/clipfind help`, in one Discord message."""
    query, *options = FIND_OPTIONS
    lines = [
        "**clipfind** finds the images posted in this server by what they show and say.",
        "",
        f"**{FIND.command}** `query:` {query.does}",
        *(_option(option) for option in options),
        f"Example: `{FIND.example}`",
        "",
        f"**{SIMILAR.command}**: {SIMILAR.example}.",
        "",
        _WHO_SEES,
        "",
    ]
    for entry in OTHERS:
        who = f" ({entry.who})" if entry.who else ""
        example = f", e.g. `{entry.example}`" if entry.example != entry.command else ""
        lines.append(f"**{entry.command}**{who}: {entry.does}{example}")
    return "\n".join(lines)


def readme_section() -> str:
    """The README's command section, between `BEGIN` and `END`."""
    rows = []
    for entry in COMMANDS:
        name = f"**{entry.command}** (message menu)" if entry.menu else f"`{entry.command}`"
        who = f" *{entry.who} only.*" if entry.who else ""
        example = entry.example if entry.menu else f"`{entry.example}`"
        rows.append(f"| {name} | {entry.does[0].upper()}{entry.does[1:]}.{who} | {example} |")
    return "\n".join(
        [
            BEGIN,
            "| command | what it does | example |",
            "|---|---|---|",
            *rows,
            "",
            "`/find`'s options, each narrowing the search itself (a filtered page is still full):",
            "",
            *(_option(option) for option in FIND_OPTIONS),
            END,
        ]
    )


def with_section(readme: str) -> str:
    """``readme`` with its command section as `readme_section` writes it."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no command section: put {BEGIN!r} and {END!r} in it")
    return readme[:start] + readme_section() + readme[end + len(END) :]


def main() -> int:
    text = README.read_text(encoding="utf-8")
    updated = with_section(text)
    if updated == text:
        sys.stderr.write(f"{README.name}: the command section is up to date\n")
        return 0
    README.write_text(updated, encoding="utf-8")
    sys.stderr.write(f"{README.name}: command section written from bot/help.py\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
