"""The fluid model's right-hand side: the serving node, its paths and its readers as mass flows.

State (``Layout``), per request class c (``sim/fluid/inputs.py``) and generation / reading stage k:

* ``wait[c]``      requests waiting for admission;
* ``run[c, k]``    running requests that have made between k/K and (k+1)/K of their output;
* ``swap[c, k]``   preempted requests (KV swapped out or dropped), at the stage they left;
* ``read[c, k]``   readers that have displayed between k/R and (k+1)/R of their output (R = ``READ_STAGES``);
* ``sock[c]``      bytes written by the server, not yet accepted by the bottleneck (socket backlog);
* ``inq[c]``       bytes in the bottleneck queue; ``buf[c]`` tokens in the readers' buffers;
* ``stall_age[c]`` how long the class's readers have been starved (for abandonment);
* per path: ``bulkq`` cross traffic's queued bytes, ``cwnd`` and ``bulk_cwnd`` (packets), ``lossf``
  (the loss signal, lagged one round trip, at least ``LAG_FLOOR_S``);
* accumulators (integrals the summary is made of).

A request's progress through its output is a chain of stages (the method of lines for the
transport of requests along their output, i.e. Erlang progress): a class with output o has
n = o / ``TOKENS_PER_STAGE`` stages (within ``MIN_STAGES``..``STAGES``), a stage holds o/n tokens of
progress and empties at (per-request rate) x n / o. Steady-state means are exact for any n (stage
occupancy and KV are linear in progress); transients are smoothed: a request's time through its
output spreads with a coefficient of variation 1/sqrt(n), where the discrete node's is nearly zero (o
steps). Few stages for long outputs leave a tail of running mass after the arrivals stop that keeps
the GPU stepping (4 stages: kv-broadband's GPU time +22% over the discrete run's; 24: +3.5%); short
outputs keep few (their stages are the fastest, which sets the solver's step).

**Node** (seed 002's step model, as ``sim/model/serving.py``): a step takes ``d0 + d1 x batch
tokens``; back to back, a step holds one decode token per running request the pacer lets go (a
request paced at rate r < 1/step contributes r x step) and the prompts admitted meanwhile, so the
step time solves ``tau = d0 + d1 (decodes(tau) + prefill_rate x tau)``. An unpaced request makes one
token per step. GPU busy fraction: the node idles only when no unpaced request runs (Poisson
occupancy: probability exp(-N_unpaced)) and then steps as paced tokens fall due or requests arrive
(a server woken at rate a, each wake a step of length tau: busy a tau / (1 + a tau)).

Admission and preemption follow fcfs (``sim/model/schedulers/fcfs.py``) as fluid laws: a waiting
request is admitted when the batch budget, ``max_running`` and KV memory allow and nobody is
preempted; KV memory (prompt plus tokens made, per running request) at its limit makes decoding
preempt the youngest running requests (LIFO: stages weighted toward the start) at the rate its growth
exceeds what completions free, and preempted requests come back, oldest first, as memory frees.
Recomputation prefills the resumed KV again (counted in the step's tokens); a swap's transfer time is
neglected (milliseconds at PCIe rates). Queue laws are written with their boundary behaviour (a queue
at zero passes its input through; a full one admits its service rate), as fluid queues are.

**Paths**: each path is a fluid drop-tail queue at its capacity (bytes/s). Senders: the running
requests of its classes (plus readers whose backlog is at least a packet), each sending its newly
written bytes plus its backlog over one round trip, together at most n x cwnd x MSS / RTT. The
window follows the fluid TCP model of Misra, Gong and Towsley, "A fluid-based analysis of a network
of AQM routers supporting TCP flows with an application to RED" (SIGCOMM 2000):
dW/dt = 1/R(t) - W(t) W(t-R) / (2 R(t-R)) p(t-R), R = propagation + q/C, where the delayed loss
signal is a first-order lag of one round trip (at least ``LAG_FLOOR_S``: a shorter lag only makes the
ODE stiff) and W(t-R) is taken as W(t); the fixed point W = sqrt(2/p) is the paper's, and the
summary's metrics depend on fixed points, not on the oscillations the delays shape. Window cuts come
at most once per round trip (NewReno's fast recovery), which keeps drop-tail's feedback from making
the ODE stiff. Where loss and queueing do not matter the streams are
application-limited and the law reduces to a simpler one: they send what they generate, the window
grows only while it limits (Linux's cwnd validation) and loss events come at the rate the flow sends
packets (so an app-limited flow's window shrinks to where it limits). Bulk cross traffic is MGT
exactly (always window-limited, Reno's AIMD for CUBIC too). Lost bytes return to the socket and are
sent again. Departures are shared among classes by their bytes in the queue (by their arrivals when
the queue is empty).

**Readers** read at their pace while their buffer holds tokens: a class's readers display at
``pace x (1 - exp(-2 b))`` tokens/s each, b the class's mean buffer per reader (so a reader with
a couple of tokens reads at full pace and a starved one reads what arrives). Abandonment is a mean
field too: a class whose readers get under a token a second ages a stall clock, and its readers leave
at their patience distribution's hazard at that age (waiting requests at their first-token patience's
hazard at the queue's waiting time); the server drops what was theirs. Stalls of single streams
(head-of-line blocking after one loss) and the abandonment of single starved readers in a class that
is fed on average are not in the model.

**Pacing**: a controller that is a law of the class's state caps its requests' generation rate:
``unpaced`` (none), ``fixed`` (a rate, or the reader's pace x headroom), ``buffer`` (BBA's map on
the class's buffer plus backlog in seconds, paused while its backlog exceeds what a fair share of
the path delivers in ``inflight_s``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scenarios.schema import ServerSpec
from sim.fluid.inputs import Classes, Hazard, PathRates

STAGES = 24  # K: the most stages of a request's progress through its output (generation and reading)
MIN_STAGES = 4  # the fewest (a short output's)
TOKENS_PER_STAGE = 32  # a class has about its output over this many stages (within MIN_STAGES..STAGES)
STAGES_LIFO = 4  # LIFO_DECAY is per quarter of the output made
READ_STAGES = 4  # stages of a reader's progress (its end comes from the engine's per-request ends, not these)
BUFFER_TOKENS = 1e-3  # tokens per reader below which a class's readers read only what arrives
SHARE_S = 1.0  # departures are shared by in-queue bytes + this many seconds of arrivals
DRAIN_S = 1.0  # a socket backlog the window does not limit is sent within about this long
GAP_S = 1.0  # a reader getting a token at least this often is not starving
AGE_RESET_S = 1.0  # a class's stall age falls back to zero this fast once it reads again
LAG_FLOOR_S = 0.5  # the loss signal's lag: one round trip, at least this (shorter only makes the ODE stiff)
LIFO_DECAY = 0.25  # preemption weight of a quarter of the output further on (youngest first)
_TINY = 1e-12

ACC_CLASS = ("arrived", "admitted", "done", "generated", "displayed", "abandoned")  # per class
ACC = ("wait_area", "ttft_area", "busy", "kv_area", "stall_area", "read_area", "preempted", "net_stall_area")


@dataclass(frozen=True)
class Layout:
    """Where each block of the state vector sits."""

    C: int
    K: int  # generation stages (the most of any class)
    P: int
    R: int = 4  # reading stages

    def blocks(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        C, K, P, R = self.C, self.K, self.P, self.R
        return {"wait": (C, (C,)), "run": (C * K, (C, K)), "swap": (C * K, (C, K)), "read": (C * R, (C, R)),
                "sock": (C, (C,)), "inq": (C, (C,)), "buf": (C, (C,)), "stall_age": (C, (C,)), "bulkq": (P, (P,)),
                "cwnd": (P, (P,)), "bulk_cwnd": (P, (P,)), "lossf": (P, (P,)),
                "acc_c": (len(ACC_CLASS) * C, (len(ACC_CLASS), C)), "acc": (len(ACC), (len(ACC),))}

    @property
    def size(self) -> int:
        return sum(n for n, _ in self.blocks().values())

    def split(self, y: np.ndarray) -> dict[str, np.ndarray]:
        out, i = {}, 0
        for name, (n, shape) in self.blocks().items():
            out[name] = y[i:i + n].reshape(shape)
            i += n
        return out


Pacing = Callable[["NodeView"], np.ndarray]


@dataclass
class NodeView:
    """What a pacing law sees of a class (per class arrays)."""

    reading: np.ndarray  # reader pace
    buffer_tokens: np.ndarray  # tokens buffered per reader
    backlog_tokens: np.ndarray  # tokens written, not delivered, per running request
    share_tps: np.ndarray  # tokens/s a fair share of the class's path delivers to one sender


class FluidModel:
    """The right-hand side for one replica; ``segment`` sets the inputs in force (constant within it)."""

    def __init__(self, server: ServerSpec, classes: Classes, paths: list[PathRates], bytes_per_token: float,
                 pacing: Pacing | None, share: float = 1.0, stages: int = STAGES,
                 patience: tuple[Hazard, Hazard] | None = None) -> None:
        """``share``: this replica's share of the arrivals and of each path (1 / replicas); ``patience``:
        the hazards of (stall, first-token) patience (None: nobody gives up)."""
        self.srv = server
        self.patience = patience
        self.cl = classes
        self.paths = paths
        self.bpt = float(bytes_per_token)
        self.pacing = pacing
        self.share = share
        C, P = len(classes), len(paths)
        o = classes.output[:, None]
        # stages per class: about TOKENS_PER_STAGE tokens each, at least MIN_STAGES, at most ``stages``
        n_st = np.clip(np.ceil(classes.output / TOKENS_PER_STAGE), min(MIN_STAGES, stages), stages).astype(int)
        K = int(n_st.max())
        self.lay = Layout(C, K, P, READ_STAGES)
        self.K = K
        k = np.arange(K)
        self.stages = n_st
        self.live = k[None, :] < n_st[:, None]  # (C, K): the class's stages (the rest stay empty)
        self.last = k[None, :] == n_st[:, None] - 1  # its last stage (leaving it: done)
        self.next_live = np.zeros_like(self.live)  # a stage whose outflow goes on to a next stage
        self.next_live[:, :-1] = self.live[:, 1:]
        self.step_out = np.repeat(o / n_st[:, None], K, axis=1)  # tokens of progress per stage
        self.kv_stage = classes.prompt[:, None] + (k[None, :] + 0.5) * self.step_out  # KV per request by stage
        self.kv_admit = classes.prompt + 0.5 * classes.output / n_st
        self.lifo = LIFO_DECAY ** (k[None, :] * STAGES_LIFO / n_st[:, None])  # by share of the output made
        self.pidx = classes.path
        self.mss = np.array([p.mss_bytes for p in paths])
        self.qmax = np.array([p.queue_bytes for p in paths])
        self.init_cwnd = np.array([p.init_cwnd for p in paths])
        self.recompute = server.preemption == "recompute"
        self.set_segment(0, 0.0, [0] * P)

    # ------------------------------------------------------------------ inputs of a segment
    def set_segment(self, lam: float, t0: float, path_index: list[int]) -> None:
        """Arrival rate (all replicas) and the index of each path's piece in force."""
        s = self.share
        self.lam_c = lam * s * self.cl.weight
        self.cap = np.array([max(p.capacity_Bps[i] * s, 0.0) for p, i in zip(self.paths, path_index, strict=True)])
        self.loss = np.array([p.loss[i] for p, i in zip(self.paths, path_index, strict=True)])
        self.rtt0 = np.array([p.rtt_s[i] for p, i in zip(self.paths, path_index, strict=True)])
        self.bulk = np.array([p.bulk_flows[i] * s for p, i in zip(self.paths, path_index, strict=True)])
        self.wmax = np.maximum(self.init_cwnd, (self.cap * self.rtt0 + self.qmax * s) / self.mss)

    def initial(self) -> np.ndarray:
        y = np.zeros(self.lay.size)
        v = self.lay.split(y)
        v["cwnd"][:] = self.init_cwnd
        v["bulk_cwnd"][:] = self.init_cwnd
        return y

    def per_path(self, x: np.ndarray) -> np.ndarray:
        return np.bincount(self.pidx, weights=x, minlength=len(self.paths))

    # ------------------------------------------------------------------ the node
    def node(self, v: dict[str, np.ndarray]) -> dict[str, np.ndarray | float]:
        """Rates of the node: step time, per-request generation rate, admissions, preemptions, resumes."""
        srv = self.srv
        run = np.maximum(v["run"], 0.0)
        swap = np.maximum(v["swap"], 0.0)
        wait = np.maximum(v["wait"], 0.0)
        n_c = run.sum(1)
        n_tot = float(n_c.sum())
        pace = self._pace(v, n_c)
        kv = float((run * self.kv_stage).sum())
        swapped = float(swap.sum())
        # step time with back-to-back stepping, prefill at the admission rate (two rounds: the
        # admission cap depends on the step time, the step time on what is admitted)
        adm_c = np.zeros_like(n_c)
        res = np.zeros_like(run)
        pre = np.zeros_like(run)
        tau = srv.d0_s + srv.d1_s * n_tot
        for _ in range(2):
            tau = self._tau(n_c, pace, adm_c, res)
            gamma = np.minimum(pace, 1.0 / tau)
            flow = gamma[:, None] * run / self.step_out  # stage k -> k+1 (the last: done)
            decodes = float((n_c * np.minimum(1.0, pace * tau)).sum())
            grow = float((flow * self.step_out)[self.next_live].sum())
            free = float((flow * self.kv_stage)[self.last].sum())
            done_rate = float(flow[self.last].sum())
            net = grow - free  # KV growth rate without admissions, resumes, preemptions
            at_mem = kv >= srv.kv_tokens * (1 - 1e-4)
            at_run = srv.max_running is not None and n_tot >= srv.max_running
            pre = np.zeros_like(run)
            res = np.zeros_like(run)
            if at_mem and net > 0:  # decoding outgrows memory: preempt the youngest
                wts = run * self.lifo
                wsum = wts.sum()
                if wsum > _TINY:
                    kv_victim = float((wts * self.kv_stage).sum() / wsum)
                    rate = net / kv_victim + max(kv - srv.kv_tokens, 0.0) / (tau * kv_victim)
                    pre = wts / wsum * rate
            elif swapped > 1e-9 and not at_run:  # memory frees: the oldest preempted come back
                kv_sw = float((swap * self.kv_stage).sum() / swapped)
                room = max(srv.kv_tokens - kv, 0.0)
                rate = (max(-net, 0.0) if at_mem else 0.0) / kv_sw + room / (tau * kv_sw)
                res = swap / swapped * rate
            # admissions (none while anyone is preempted)
            lam = self.lam_c
            queued = wait.sum() > 1e-9
            mix = wait / wait.sum() if queued else self.cl.weight
            p_mix = float((mix * self.cl.prompt).sum())
            budget_tau = srv.d0_s + srv.d1_s * srv.batch_tokens
            cap = max(srv.batch_tokens - decodes, 0.0) / (budget_tau * max(p_mix, 1.0))
            if at_run:
                cap = min(cap, done_rate)
            if at_mem:
                cap = min(cap, max(-net, 0.0) / float((mix * self.kv_admit).sum()))
            if swapped > 1e-9:
                cap = 0.0
            total = cap if queued else min(cap, float(lam.sum()))
            adm_c = mix * total
        n_unpaced = float(n_c[pace * tau >= 1.0].sum())
        slow = pace * tau < 1.0
        wake = float((n_c[slow] * pace[slow]).sum()) + float(adm_c.sum())
        busy = 1.0 - np.exp(-n_unpaced) / (1.0 + wake * tau)
        return {"tau": tau, "gamma": gamma, "flow": flow, "adm": adm_c, "pre": pre, "res": res, "kv": kv,
                "busy": busy, "decodes": decodes, "n": n_c}

    def _tau(self, n_c: np.ndarray, pace: np.ndarray, adm_c: np.ndarray, res: np.ndarray) -> float:
        srv = self.srv
        prefill = float((adm_c * self.cl.prompt).sum())
        if self.recompute:
            prefill += float((res * self.kv_stage).sum())
        tau = srv.d0_s + srv.d1_s * float(n_c.sum())
        for _ in range(3):  # paced requests join a step in proportion to its length
            full = pace * tau >= 1.0
            fixed = srv.d0_s + srv.d1_s * float(n_c[full].sum())
            slope = srv.d1_s * (float((n_c[~full] * pace[~full]).sum()) + prefill)
            tau = fixed / max(1.0 - slope, 1e-3)
        return tau

    def _pace(self, v: dict[str, np.ndarray], n_c: np.ndarray) -> np.ndarray:
        if self.pacing is None:
            return np.full(len(n_c), np.inf)
        readers = np.maximum(v["read"], 0.0).sum(1)
        cap_share = self.cap / np.maximum(self.per_path(n_c + readers), 1.0) / self.bpt
        view = NodeView(self.cl.reading, np.maximum(v["buf"], 0.0) / np.maximum(readers, 1e-9),
                        np.maximum(v["sock"] + v["inq"], 0.0) / self.bpt / np.maximum(n_c, 1e-9),
                        cap_share[self.pidx])
        return self.pacing(view)

    # ------------------------------------------------------------------ everything
    def rhs(self, t: float, y: np.ndarray) -> np.ndarray:
        v = self.lay.split(y)
        dy = np.zeros_like(y)
        d = self.lay.split(dy)
        nd = self.node(v)
        flow, adm, pre, res = nd["flow"], nd["adm"], nd["pre"], nd["res"]
        # node
        d["wait"][:] = self.lam_c - adm
        inflow = np.zeros_like(flow)
        inflow[:, 1:] = np.where(self.next_live[:, :-1], flow[:, :-1], 0.0)
        inflow[:, 0] += adm
        d["run"][:] = inflow - flow - pre + res
        d["swap"][:] = pre - res
        gen_tps = (nd["gamma"][:, None] * np.maximum(v["run"], 0.0)).sum(1)  # tokens/s per class
        # paths: sending (application-limited, or the window's share), the drop-tail queue, TCP windows
        mss = self.mss
        inq = np.maximum(v["inq"], 0.0)
        sock = np.maximum(v["sock"], 0.0)
        bulkq = np.maximum(v["bulkq"], 0.0)
        q = self.per_path(inq) + bulkq
        cap = self.cap
        rtt = self.rtt0 + q / np.maximum(cap, 1e3)
        read = np.maximum(v["read"], 0.0)
        readers = read.sum(1)
        senders = self.per_path(nd["n"] + np.minimum(readers, sock / mss[self.pidx]))
        written_c = self.bpt * gen_tps
        written = self.per_path(written_c)
        cwnd = np.maximum(v["cwnd"], 1.0)
        window = senders * cwnd * mss / rtt
        passed = np.minimum(1.0, window / np.maximum(written, _TINY))
        spare = np.maximum(window - written, 0.0)
        backlog = self.per_path(sock)
        # a backlog goes at the window's spare rate, shared by backlog, and at most within DRAIN_S (a
        # relaxation, not a jump: an ODE cannot empty a queue in no time without chattering at zero)
        x_c = written_c * passed[self.pidx] + np.minimum((spare / np.maximum(backlog, _TINY))[self.pidx],
                                                         1.0 / DRAIN_S) * sock
        x = self.per_path(x_c)
        bulk_cwnd = np.maximum(v["bulk_cwnd"], 1.0)
        xb = self.bulk * bulk_cwnd * mss / rtt
        offered = (x + xb) * (1.0 - self.loss)
        full = q >= self.qmax * self.share - mss
        drop = np.where(full, np.clip(1.0 - cap / np.maximum(offered, _TINY), 0.0, 1.0), 0.0)
        keep = (1.0 - self.loss) * (1.0 - drop)
        acc_c = x_c * keep[self.pidx]
        acc_b = xb * keep
        accepted = self.per_path(acc_c) + acc_b
        served = np.where(q > 1.0, cap, np.minimum(cap, accepted))
        weight_c = inq + SHARE_S * acc_c
        weight_b = bulkq + SHARE_S * acc_b
        ratio = served / np.maximum(self.per_path(weight_c) + weight_b, _TINY)
        dep_c = weight_c * ratio[self.pidx]
        d["sock"][:] = written_c - acc_c
        d["inq"][:] = acc_c - dep_c
        d["bulkq"][:] = acc_b - weight_b * ratio
        d["lossf"][:] = (1.0 - keep - v["lossf"]) / np.maximum(rtt, LAG_FLOOR_S)
        lossf = np.clip(v["lossf"], 0.0, 1.0)
        limited = np.clip(written / np.maximum(window, _TINY), 0.0, 1.0)
        limited = np.where(backlog > 1.0, 1.0, limited)
        per_flow_pkts = x / np.maximum(senders, 1e-9) / mss
        joins = self.per_path(adm) / np.maximum(senders, 1.0)
        events = np.minimum(per_flow_pkts * lossf, 1.0 / rtt)  # at most one window cut per round trip
        dw = limited / rtt - cwnd / 2 * events + joins * (self.init_cwnd - cwnd)
        d["cwnd"][:] = np.where((cwnd >= self.wmax) & (dw > 0), 0.0, dw)
        bulk_events = np.minimum(bulk_cwnd / rtt * lossf, 1.0 / rtt)
        dwb = np.where(self.bulk > 0, 1.0 / rtt - bulk_cwnd / 2 * bulk_events, 0.0)
        d["bulk_cwnd"][:] = np.where((bulk_cwnd >= self.wmax) & (dwb > 0), 0.0, dwb)
        # readers: full pace while the class's buffer holds tokens, else what arrives
        delivered = dep_c / self.bpt
        wanted = self.cl.reading * readers
        display = np.where(v["buf"] > BUFFER_TOKENS * readers, wanted, np.minimum(wanted, delivered))
        pace_frac = display / np.maximum(wanted, _TINY)
        rflow = (self.cl.reading * pace_frac)[:, None] * read * (READ_STAGES / self.cl.output[:, None])
        rin = np.zeros_like(rflow)
        rin[:, 1:] = rflow[:, :-1]
        rin[:, 0] += adm
        d["read"][:] = rin - rflow
        d["buf"][:] = delivered - display
        # abandonment: a class's readers starve together (mean field); after a stall of z seconds they
        # leave at their patience's hazard h(z), and the server drops what was theirs; a waiting request
        # leaves at its first-token patience's hazard at the queue's waiting time (Little: wait / inflow)
        # starved: short of tokens and getting under one a second (a reader fed slower than it reads but
        # steadily never sees a stall as long as its patience: its timer restarts at every token)
        per_reader = delivered / np.maximum(readers, 1e-9)
        starved = np.where(readers > 1e-9, (1.0 - pace_frac) * np.clip(1.0 - per_reader * GAP_S, 0.0, 1.0), 0.0)
        age = np.maximum(v["stall_age"], 0.0)
        d["stall_age"][:] = starved - (1.0 - starved) * age / AGE_RESET_S
        gone = np.zeros_like(readers)
        if self.patience is not None:
            stall_h, first_h = self.patience
            phi = stall_h.at(age) * starved
            gone = phi * readers
            for name in ("read", "run", "swap"):
                d[name][:] -= phi[:, None] * np.maximum(v[name], 0.0)
            d["sock"][:] -= phi * sock
            d["buf"][:] -= phi * np.maximum(v["buf"], 0.0)
            waiting = np.maximum(v["wait"], 0.0)
            inflow = max(float(self.lam_c.sum()), float(adm.sum()), 1e-9)
            leave = first_h.at(float(waiting.sum()) / inflow) * waiting
            d["wait"][:] -= leave
            gone = gone + leave
        # accumulators
        ac = d["acc_c"]
        ac[0] = self.lam_c
        ac[1] = adm
        ac[2] = rflow[:, -1]
        ac[3] = gen_tps
        ac[4] = display
        ac[5] = gone
        tau = nd["tau"]
        extra = (nd["busy"] * tau / 2 + self.srv.d0_s + self.srv.d1_s * (nd["decodes"] + self.cl.prompt)
                 + (2 * rtt + self.bpt / np.maximum(cap, 1e3))[self.pidx])  # two round trips, queueing included
        a = d["acc"]
        a[0] = float(np.maximum(v["wait"], 0.0).sum())
        a[1] = float((adm * extra).sum())
        a[2] = nd["busy"]
        a[3] = nd["kv"]
        a[4] = float((readers * (1.0 - pace_frac)).sum())
        a[5] = float(readers.sum())
        a[6] = float(pre.sum())
        # the stalls the network causes: starved readers of a class whose tokens sit in the socket or the
        # bottleneck queue (a token per reader or more), not waiting for the GPU
        in_net = np.clip((sock + inq) / self.bpt / np.maximum(readers, 1e-9), 0.0, 1.0)
        a[7] = float((readers * (1.0 - pace_frac) * in_net).sum())
        return dy
