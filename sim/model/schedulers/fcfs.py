"""``fcfs``: vLLM's scheduler, as seed 002 models it -- RUNNING > SWAPPED > WAITING, first come first served.

Running streams the pacer allows decode in order of entering RUNNING (up to the budget); when their
growth would overflow KV memory, victims are preempted by ``server.victim_policy`` (LIFO / FIFO /
random) until it fits. Preempted streams come back oldest first while memory allows (never in a step
that had to preempt), and waiting requests are admitted first come first served only when nobody is
preempted. Observations and decisions are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.model.schedulers.base import Scheduler, paced_decodes, policy_victim, resume_into

if TYPE_CHECKING:
    from sim.model.serving import Sequence, ServingCore


class Fcfs(Scheduler):
    name = "fcfs"
    label = "FCFS (vLLM)"

    def schedule(self, core: ServingCore, now: float) -> tuple[list[Sequence], list[Sequence], list[Sequence]]:
        spec = core.spec
        budget = spec.batch_tokens
        max_running = spec.max_running or 1 << 30
        kv_total = spec.kv_tokens
        running, swapped, waiting, incoming = core.running, core.swapped, core.waiting, core.incoming
        # 1. running streams the pacer allows, in FCFS order; each grows KV by one token
        decodes = paced_decodes(running, now)
        del decodes[budget:]
        preempted = False
        while decodes and core.kv_used + len(decodes) > kv_total:
            victim = policy_victim(core)
            core.preempt(victim, now, f"kv {core.kv_used}+{len(decodes)} > {kv_total}")
            preempted = True
            if victim in decodes:
                decodes.remove(victim)
        budget -= len(decodes)
        # 2. bring preempted streams back, oldest first, while memory allows (never in a step that had to
        # preempt); a recomputation needs its prompt and generated tokens in the budget
        recomputes: list[Sequence] = []
        while (not preempted and swapped and len(running) + len(incoming) < max_running
               and core.kv_used + len(decodes) + len(recomputes) + swapped[0].kv_tokens + 1 <= kv_total):
            s = swapped[0]
            cost = core.resume_tokens(s)
            if cost and cost > budget and (decodes or recomputes):  # larger than B: runs alone
                break
            budget -= resume_into(core, s, now, decodes, recomputes, budget)
        # 3. admit waiting requests FCFS: prefill needs its prompt in the budget and in memory
        prefills: list[Sequence] = []
        while waiting and not swapped and len(running) + len(incoming) < max_running:
            s = waiting[0]
            alone = not decodes and not prefills and not recomputes  # a prompt larger than B still runs, alone
            # kv_used already holds admitted prompts; each decode and prefill adds one token this step
            if core.kv_used + len(decodes) + len(prefills) + len(recomputes) + s.prompt_tokens + 1 > kv_total:
                break
            if s.prompt_tokens > budget and not alone:
                break
            core.admit(s, now)
            budget -= s.prompt_tokens
            prefills.append(s)
        return decodes, prefills, recomputes
