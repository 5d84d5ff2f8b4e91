"""The long-lived objects a process builds at start-up, taken out of the collector's sight."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Take what start-up built out of the garbage collector's sight.

    The model, torch, open_clip and discord.py leave some 440,000 objects that live as long as
    the process. A full collection scans them all, about 0.3 s with the event loop stopped,
    and a busy stretch (a large guild's matrix loading, a flood of images) sets off several.
    Frozen, they are skipped; collections then scan only what came later.
    """
    gc.collect()  # garbage left now would never be collected once frozen
    gc.freeze()
