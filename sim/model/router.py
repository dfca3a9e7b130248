"""Which replica serves a request: the router in front of ``server.replicas`` copies of the node.

What it models. Data-parallel serving: N identical GPUs (replicas), each a whole serving node with its
own KV memory, token budget and scheduler (its own :class:`sim.model.serving.ServingCore`), behind a
request router, as in seed 004's GPU scaling experiment (one inference process per GPU, requests spread
over them) and in serving stacks that put a load balancer in front of vLLM engines (arXiv 2309.06180
serves one model per engine; the router is outside it). A request is routed once, when it reaches the
server, and stays on its replica to the end: its KV lives there, so nothing migrates.

Routers (``server.router``), with time passed in nowhere (as ``sim/model/serving.py``): each is asked
``choose(seq, cores)`` -- the request as the node sees it (its :class:`Sequence`) and every replica's
core -- and answers the replica's index.

* ``round_robin``: replicas in turn (0, 1, ..., N-1, 0, ...), blind to load and to the request.
* ``least_outstanding``: the replica holding the fewest unfinished requests (waiting, running, swapping
  in, or preempted: :func:`outstanding`) -- "join the shortest queue" (Winston 1977; Nginx's
  ``least_conn``, Envoy's ``LEAST_REQUEST``). Ties go in turn: the first tied replica after the one
  chosen last, so an idle cluster is filled round robin rather than always from replica 0 (which at
  light load would send replica 0 most requests). It counts requests, not their work: a replica with
  few long requests looks as free as one with few short ones.

* ``prefix_affinity``: a request with a shared prefix (``workload.prefix``) goes to the replica that
  served that prefix last, so its replica's prefix cache (``server.prefix_cache``) holds it and the hit
  skips the prefix's prefill; the router keeps its own map of prefix -> replica, as a real router does
  (SGLang's cache-aware router keeps an approximate radix tree per worker rather than asking them), so
  it works before the replica's cache has the prefix and without reading the replicas' caches. Load is
  bounded as in consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018;
  HAProxy's ``hash-balance-factor``): a replica takes an affine request only while its outstanding
  requests, this one included, stay within ``ceil((1 + EPSILON) x`` the mean over replicas); otherwise,
  and for requests without a prefix, least_outstanding chooses, and the prefix moves to the replica
  chosen. ``EPSILON`` = 0.25 (HAProxy's documented example ``hash-balance-factor 125``).

A router is one class in :data:`REGISTRY`; ``scenarios/schema.py``'s ``ServerSpec.router`` lists the
names a scenario may give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from sim.model.serving import Sequence, ServingCore

__all__ = ["REGISTRY", "LeastOutstanding", "PrefixAffinity", "RoundRobin", "Router", "make", "outstanding"]


def outstanding(core: ServingCore) -> int:
    """Requests the replica holds that are not finished or cancelled: waiting, running (a swap-in on the
    host link included) and preempted."""
    return len(core.waiting) + len(core.running) + len(core.incoming) + len(core.swapped)


class Router:
    """Picks a replica for each request. One instance per run (a router may keep state, as the turn)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""

    def choose(self, seq: Sequence, cores: Seq[ServingCore]) -> int:
        """The index in ``cores`` of the replica that serves ``seq`` (called once per request)."""
        raise NotImplementedError


class RoundRobin(Router):
    name = "round_robin"
    label = "round robin: replicas in turn"

    def __init__(self) -> None:
        self.turn = 0

    def choose(self, seq: Sequence, cores: Seq[ServingCore]) -> int:
        i = self.turn % len(cores)
        self.turn = i + 1
        return i


class LeastOutstanding(Router):
    name = "least_outstanding"
    label = "least outstanding: fewest unfinished requests (ties in turn)"

    def __init__(self) -> None:
        self.turn = 0  # where the search for a tied replica starts: after the last one chosen

    def choose(self, seq: Sequence, cores: Seq[ServingCore]) -> int:
        n = len(cores)
        loads = [outstanding(c) for c in cores]
        least = min(loads)
        start = self.turn % n
        i = next(j % n for j in range(start, start + n) if loads[j % n] == least)
        self.turn = i + 1
        return i


class PrefixAffinity(Router):
    name = "prefix_affinity"
    label = "prefix affinity: a prefix's last replica, within a bounded load (else least outstanding)"

    EPSILON = 0.25  # load bound: (1 + EPSILON) x the mean outstanding requests per replica

    def __init__(self) -> None:
        self.least = LeastOutstanding()
        self.home: dict[int, int] = {}  # prefix id -> the replica that served it last

    def choose(self, seq: Sequence, cores: Seq[ServingCore]) -> int:
        pid = seq.prefix_id
        home = self.home.get(pid) if pid is not None else None
        if home is not None and home < len(cores):
            loads = [outstanding(c) for c in cores]
            bound = math.ceil((1.0 + self.EPSILON) * (sum(loads) + 1) / len(cores))
            if loads[home] + 1 <= bound:
                return home
        i = self.least.choose(seq, cores)
        if pid is not None:
            self.home[pid] = i
        return i


REGISTRY: dict[str, type[Router]] = {cls.name: cls for cls in (RoundRobin, LeastOutstanding, PrefixAffinity)}


def make(name: str) -> Router:
    """A fresh router by name (``server.router``); KeyError names the known ones."""
    try:
        return REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown router {name!r}; known: {', '.join(REGISTRY)}") from None
