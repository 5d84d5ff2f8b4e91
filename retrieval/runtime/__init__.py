"""What hosts a process: the composition root that opens its services (`services`), signals and
stopping (`signals`), the operator's view of it (`operating`: heartbeat, metrics, /healthz) and
of the whole cluster (`cluster`)."""

from __future__ import annotations

from retrieval.runtime.cluster import ClusterFigures, Consumer, read_figures
from retrieval.runtime.heap import freeze_heap
from retrieval.runtime.operating import age, counted, operator_view
from retrieval.runtime.services import Services, open_services
from retrieval.runtime.signals import Stop, die_on_signals, exit_now, exit_on_signals, stoppable

__all__ = [
    "ClusterFigures",
    "Consumer",
    "Services",
    "Stop",
    "age",
    "counted",
    "die_on_signals",
    "exit_now",
    "exit_on_signals",
    "freeze_heap",
    "open_services",
    "operator_view",
    "read_figures",
    "stoppable",
]
