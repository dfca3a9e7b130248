"""The scheduler contract: at each step of the node, who decodes, who is preempted, who is admitted.

A scheduler is a policy over the :class:`~sim.model.serving.ServingCore`'s state; the core holds the
mechanisms (memory accounting, the cost of a preemption, pacing credit, the log). Each step the
core calls ``schedule(core, now)`` and the scheduler answers with three lists:

* ``decodes``: running streams that make one token this step (each grows its KV by one token);
* ``prefills``: waiting requests it admitted with ``core.admit(s, now)`` (their prompt is in the batch);
* ``recomputes``: preempted streams it resumed with ``core.resume(s, now)`` that came back as
  ``"recompute"`` (their prompt and generated tokens are in the batch).

Along the way it may ``core.preempt(s, now, reason)`` running streams (swap-out or drop, per
``server.preemption``) and ``core.resume(s, now)`` preempted ones (``"ready"``: may decode now;
``"transfer"``: its KV is on the host link until ``s.resume_s``). What it can see:

* every stream's lists and sizes: ``core.waiting``, ``core.running``, ``core.incoming``, ``core.swapped``,
  ``s.kv_tokens``, ``core.kv_used`` against ``core.spec.kv_tokens``, the budget ``core.spec.batch_tokens``;
* pacing: ``s.rate_tps`` and ``s.credit`` (``s.eligible(now)``, ``s.ready_at(now)``);
* each stream's latest Observation and its controller's Decision: ``core.observation(s.req_id)``
  (the driver hands them over each control interval when ``uses_observations`` is set);
* what a preemption costs: ``core.resume_tokens(s)`` (batch tokens of a recompute),
  ``s.kv_tokens * core.spec.kv_bytes_per_token`` over ``core.swap_bytes_per_s`` after
  ``core.link_free_s`` (a swap).

That is enough for a knapsack over streams valued per KV token (Andes: value each stream's QoE
gain over a horizon from its Observation, divide by ``s.kv_tokens``, keep the best within
``spec.kv_tokens`` and preempt the rest) and for a buffer-aware policy (TokenFlow, tokenpace:
preempt the stream whose client buffer, ``obs.client_buffer_est`` or acked tokens, covers a swap's
round trip). Schedulers never read a clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from controllers.base import Params as _ParamsBase
from sim.model.serving import _READY, CREDIT_CAP_TOKENS

if TYPE_CHECKING:
    from sim.model.serving import Sequence, ServingCore


class Params(_ParamsBase):
    """Base of every scheduler's parameters: validated from ``server.scheduler.params``, unknown keys rejected."""


class Scheduler(ABC):
    """One scheduling policy. Subclasses set ``name``, ``label`` and ``Params`` and implement ``schedule``."""

    name: ClassVar[str]
    label: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    uses_observations: ClassVar[bool] = False  # the driver hands over Observations/Decisions only if set
    # Does the policy take memory from a stream that is ahead of its reader (so a paced stream does not hold
    # KV memory a waiting request needs)? fcfs does not: there, pacing a stream keeps its memory longer.
    frees_paced_memory: ClassVar[bool] = False

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> Scheduler:
        return cls(cls.Params.model_validate(params or {}))

    @abstractmethod
    def schedule(self, core: ServingCore, now: float) -> tuple[list[Sequence], list[Sequence], list[Sequence]]:
        """This step's (decodes, prefills, recomputes); preempt / resume / admit through the core."""


def paced_decodes(running: list[Sequence], now: float,
                  run_ahead: Callable[[Sequence], bool] | None = None) -> list[Sequence]:
    """The running streams the pacer lets decode now, in order: ``Sequence.eligible()`` inlined, since every
    running stream is visited every step. Credit accrues at every visit, as ``eligible()`` does, so the
    arithmetic (and every result) is the same. ``run_ahead(s)``: may a stream without credit decode anyway?
    It is then granted the token (credit set to one, spent by the step), not lent it."""
    decodes = []
    for s in running:
        rate = s.rate_tps
        if rate is not None:
            if now > s.credit_t:
                credit = s.credit + rate * (now - s.credit_t)
                s.credit = credit if credit < CREDIT_CAP_TOKENS else CREDIT_CAP_TOKENS
            s.credit_t = now
            if not s.credit >= _READY:
                if run_ahead is None or not run_ahead(s):
                    continue
                s.credit = 1.0
        decodes.append(s)
    return decodes


def policy_victim(core: ServingCore) -> Sequence:
    """The running stream ``server.victim_policy`` preempts: LIFO (the last to enter RUNNING; ties: the
    last in the list), FIFO (the first) or random (the core's RNG)."""
    policy = core.spec.victim_policy
    running = core.running
    if policy == "LIFO":
        return max(reversed(running), key=lambda s: s.enter_running_s)
    if policy == "FIFO":
        return min(running, key=lambda s: s.enter_running_s)
    return running[int(core.rng.integers(len(running)))]


def resume_into(core: ServingCore, s: Sequence, now: float, decodes: list[Sequence], recomputes: list[Sequence],
                budget: int) -> int:
    """Bring the preempted ``s`` back (``core.resume``) and put it in this step: a recomputation joins
    ``recomputes`` (its prompt and generated tokens in the budget), a stream whose KV is back joins ``decodes``
    if the budget and its pacer allow (a swap-in still on the host link joins nothing). Returns the budget
    taken."""
    cost = core.resume_tokens(s)
    kind = core.resume(s, now)
    if kind == "recompute":
        recomputes.append(s)
        return cost
    if kind == "ready" and budget > 0 and s.eligible(now):
        decodes.append(s)
        return 1
    return 0
