"""What may be indexed and kept: members' opt-outs and excluded channels (`index_policy`),
servers the bot left (`departures`), and threads whose parent channel is not known yet
(`thread_parents`)."""

from __future__ import annotations

from retrieval.policy.departures import Departures
from retrieval.policy.index_policy import IndexPolicy
from retrieval.policy.thread_parents import ThreadParents

__all__ = ["Departures", "IndexPolicy", "ThreadParents"]
