"""``tokenflow``: TokenFlow's buffer-aware preemptive scheduler, network-blind as published.

TokenFlow (Chen et al., "TokenFlow: Responsive LLM Text Streaming Serving under Request Burst via
Preemptive Scheduling", arXiv 2510.02758, EuroSys 2026) prioritises each request by its client's
token buffer and consumption rate: a request whose buffer is low, or whose reader is fast, runs; one
whose buffer outlasts the switching cost may be preempted so that new arrivals get a short time to
first token, and is brought back when its buffer nears the safety threshold. The buffer is tokens
generated minus tokens read at the requested rate -- every token counts as delivered the moment it
is made, whatever the network does (here :meth:`Sequence.scheduled_buffer_s`, which the core keeps
on the request's hint, ``reading_tps``). Priority is that buffer in seconds of reading (tokens over
consumption rate), so a fast reader's tokens weigh more.

What is modelled, with :mod:`sim.model.schedulers.buffered`'s machinery: the buffer safety condition
(preempt only when the buffer covers the round trip of the preemption plus ``preempt_margin_s``);
resumption when the buffer falls to the round trip plus ``resume_margin_s``, most urgent first;
admission of new arrivals by preempting the streams with most buffer; the I/O cost model's queueing
(``t_evict_queueing + t_evict + t_load_queueing + t_load``: the host link's FIFO queue and both
transfers, or the recomputation step).

What is approximated: TokenFlow writes KV through to host memory as it is made and reloads it in
chunks overlapped with compute, so an eviction moves only the last chunk; the core moves a stream's
whole KV out on preemption and lets it decode only once all of it is back (the costs are therefore
higher here than in the paper, and priced as such). Its two-step selection (a working set sized from
memory, KV footprints, queue and I/O lengths, then greedy buffer balancing with local swaps) is the
greedy order here: urgent preempted streams, then arrivals, then the rest into free memory. Decodes
within the batch token budget keep fcfs's order. The paper does not state numeric margins in the text
we could read (its abstract and secondary summaries); ``preempt_margin_s = 2`` and
``resume_margin_s = 1`` are ours: one second of hysteresis at Andes'/TokenFlow's reading speeds
(4-20 tokens/s) is 4-20 tokens, a few decode steps of a resumed stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.model.schedulers.buffered import BufferAware

if TYPE_CHECKING:
    from sim.model.serving import Sequence, ServingCore


class TokenFlow(BufferAware):
    name = "tokenflow"
    label = "TokenFlow (buffer-aware, network-blind)"

    def assess(self, core: ServingCore, s: Sequence, now: float, horizon_s: float) -> tuple[int, float]:
        """Generated minus read on schedule, in seconds of reading, beyond the horizon."""
        return 0, s.scheduled_buffer_s(now) - horizon_s

    def fallback_victim(self, core: ServingCore, now: float) -> Sequence:
        """The lowest priority: the largest buffer (ties: the last to enter RUNNING)."""
        return max(reversed(core.running), key=lambda s: (s.scheduled_buffer_s(now), s.enter_running_s))
