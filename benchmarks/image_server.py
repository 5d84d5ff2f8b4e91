"""The benchmarks' stand-in for Discord's CDN and media proxy, in a process of its own.

Serves images[i] at <base>/i, and answers the media proxy's resize parameters there as the
Discord stand-in does (tests/fakediscord/media.py: Pillow, each copy made once and cached).
``POST /prepare`` with a JSON list of URLs makes their copies before a measurement, so their
making is not timed; ``GET /served`` says how many bytes of bodies were sent. ``--latency-ms``
holds each answer that long first, as a CDN far away does.

Its own process, because in the measured one its Python held the pipeline's interpreter lock
about 0.3 ms per image (benchmarks/RESULTS.md): nothing at 30 images/s, most of a core at a
GPU's thousands. Started by `benchmarks.harness.image_server`, which passes the images as a
pickled file and reads the port from the first line printed.

    python -m benchmarks.image_server IMAGES.pickle [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import sys
from pathlib import Path
from typing import Any

import yarl
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.fakediscord, wherever it is started from

from tests.fakediscord.media import Resize, Variants  # noqa: E402


class ImageServer:
    def __init__(self, images: list[tuple[bytes, str]], *, latency_s: float = 0.0) -> None:
        self.images = images
        self.latency_s = latency_s
        self.served = 0
        self._variants = Variants()

    async def _body(self, i: int, query: Any) -> tuple[bytes, str]:
        data, content_type = self.images[i]
        resize = Resize.from_query(query)
        if resize is None:
            return data, content_type
        copy, copy_type, _ = await self._variants.get(str(i), data, resize)
        return copy, copy_type

    async def image(self, request: web.Request) -> web.Response:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        body, content_type = await self._body(int(request.match_info["i"]), request.query)
        self.served += len(body)
        return web.Response(body=body, content_type=content_type)

    async def prepare(self, request: web.Request) -> web.Response:
        for url in await request.json():
            parsed = yarl.URL(url)
            await self._body(int(parsed.name), parsed.query)
        return web.json_response({"ok": True})

    async def served_bytes(self, request: web.Request) -> web.Response:
        return web.json_response({"served": self.served})


async def serve(images: list[tuple[bytes, str]], latency_s: float) -> None:
    server = ImageServer(images, latency_s=latency_s)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/img/{i}", server.image)
    app.router.add_post("/prepare", server.prepare)
    app.router.add_get("/served", server.served_bytes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    # Until the parent closes stdin (or ends): the server never outlives the benchmark.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="a pickled list of (bytes, content type)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    images = pickle.loads(args.images.read_bytes())
    asyncio.run(serve(images, args.latency_ms / 1000))


if __name__ == "__main__":
    main()
