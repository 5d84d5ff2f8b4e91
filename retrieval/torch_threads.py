"""torch's intra-op threads, for the calling thread alone.

torch keeps the count per thread, and a thread takes the process's latest count (that of
whichever thread set one last) the first time it asks for it or runs an operation. So a thread
that sets its count before it has done either can still be handed another thread's count:
asking first settles its own, and setting it then holds, whatever other threads set later.
"""

from __future__ import annotations


def use_torch_threads(count: int) -> None:
    """torch's operations on this thread use ``count`` threads from now on."""
    import torch  # here: a process that never runs torch does not load it for this module

    torch.get_num_threads()  # this thread's count is its own from here, not set at first use
    torch.set_num_threads(count)
