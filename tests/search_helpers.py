"""Small helpers the search end-to-end tests share: pictures to post, asking, reading answers."""

from __future__ import annotations

import re

from tests.fakediscord import Attachment
from tests.tinyclip.shapes import draw, jpeg_bytes, png_bytes

JUMP = re.compile(r"https://discord\.com/channels/(\d+)/(\d+)/(\d+)")
MESSAGE_GET = re.compile(r"^/channels/\d+/messages/\d+$")


def picture(colour: str, shape: str, seed: int, *, jpeg: bool = False, size: int = 160):
    image = draw(colour, shape, size=size, rng=seed)
    if jpeg:
        return Attachment(f"{colour}-{shape}.jpg", jpeg_bytes(image), "image/jpeg")
    return Attachment(f"{colour}-{shape}.png", png_bytes(image), "image/png")


async def find(fd, guild, where, member, query: str, **options) -> dict:
    """The answer ``member`` sees to `/find` asked in channel ``where``."""
    interaction = await fd.invoke_slash(guild, where, member, "find", {"query": query, **options})
    return await interaction.wait_reply(timeout=30)


def result_ids(reply: dict) -> list[int]:
    """Message ids of the results, in the order shown (the first jump link of each embed)."""
    return [int(JUMP.search(e["description"]).group(3)) for e in reply["embeds"]]


def message_fetches(fd) -> int:
    """REST reads of single messages so far (what confirming a result costs)."""
    return sum(1 for r in fd.requests if r.method == "GET" and MESSAGE_GET.match(r.path))


def buttons(reply: dict) -> dict[str, bool]:
    """custom_id -> enabled, for every button on the answer."""
    return {
        item["custom_id"]: not item.get("disabled", False)
        for row in reply.get("components", [])
        for item in row.get("components", [])
    }
