"""The scenario file: what the serving node, the workload, the network paths, the readers and the
fault timeline look like. Validated by pydantic; unknown keys are rejected so a typo never
silently falls back to a default. The simulator and live mode read the same models.

Units are in the key names. Rates on the wire are megabits per second (``rate_mbps``), token
rates are tokens per second (``_tps``), times are seconds unless named ``_ms``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from scenarios.dists import Dist


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------- serving node
class SchedulerSpec(_Model):
    """``server.scheduler``: a policy by name (sim/model/schedulers/) and its parameters."""

    name: str = Field("fcfs", description="scheduler name (fcfs: vLLM's first come first served)")
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters (validated by the scheduler)")


class PrefixCacheSpec(_Model):
    """``server.prefix_cache``: a cache of shared prompt prefixes kept in KV memory (seed 004's KV cache
    experiment; ``sim/model/prefix_cache.py``). Sizes count prefixes (entries), as seed 004's
    ``CacheEnabledInferenceProcessor`` does; their KV tokens compete with running streams in ``kv_tokens``.
    Defaults are seed 004's: STATIC 5 entries; FLUID and FREQUENCY start at 5, stay in [5, 60] and are
    re-sized every 20 lookups; FLUID compares the request rate over a 3 s window with its moving average
    (grow x1.15 above 1.35x, shrink /1.08 below 0.65x); FREQUENCY sizes for a 0.9 hit rate over 500 buckets."""

    strategy: Literal["static", "fluid", "frequency"] = Field(description="how the cache is sized")
    size: int = Field(5, ge=0, description="entries: STATIC's fixed size, the others' initial size")
    min_size: int = Field(5, ge=0, description="FLUID/FREQUENCY: fewest entries")
    max_size: int = Field(60, ge=0, description="FLUID/FREQUENCY: most entries")
    adjust_every: int = Field(20, gt=0, description="FLUID/FREQUENCY: lookups between two sizing decisions")
    window_s: float = Field(3.0, gt=0, description="FLUID: the request-rate window")
    grow_above: float = Field(1.35, gt=0, description="FLUID: grow when the rate exceeds this x its average")
    shrink_below: float = Field(0.65, gt=0, description="FLUID: shrink when the rate is under this x its average")
    grow_factor: float = Field(1.15, ge=1, description="FLUID: size x this (rounded up) when growing")
    shrink_factor: float = Field(1.08, ge=1, description="FLUID: size / this (rounded up) when shrinking")
    target_hit_rate: float = Field(0.9, gt=0, le=1, description="FREQUENCY: the hit rate to size for")
    buckets: int = Field(500, gt=0, description="FREQUENCY: frequency-capture buckets")

    @model_validator(mode="after")
    def _bounds(self) -> PrefixCacheSpec:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} > max_size {self.max_size}")
        if self.shrink_below >= self.grow_above:
            raise ValueError(f"shrink_below {self.shrink_below:g} must be under grow_above {self.grow_above:g}")
        return self


MAX_REPLICAS = 256  # server.replicas past this is a typo, not a deployment


class ServerSpec(_Model):
    """Seed 002's serving node: step time d0 + d1 * batch_tokens, token budget B, KV memory M_total."""

    d0_s: float = Field(0.02, gt=0, description="fixed cost of one decode step (s)")
    d1_s: float = Field(2e-5, ge=0, description="cost per batch token (s); prefill tokens count too")
    batch_tokens: int = Field(2048, gt=0, description="B: token budget of one step (decodes + prefills)")
    kv_tokens: int = Field(200_000, gt=0, description="M_total: KV memory in tokens (prompt + generated per stream)")
    max_running: int | None = Field(256, gt=0, description="most streams holding KV at once (vLLM max_num_seqs)")
    victim_policy: Literal["LIFO", "FIFO", "random"] = "LIFO"
    queue_policy: Literal["FCFS"] = "FCFS"
    scheduler: SchedulerSpec = Field(
        default_factory=SchedulerSpec,
        description="who decodes, who is preempted, who is admitted each step; a name or {name, params}",
    )
    preemption: Literal["swap", "recompute"] = Field(
        "swap", description="swap: KV goes to host memory and back; recompute: KV is dropped and prefilled again"
    )
    swap_gbps: float | None = Field(
        None, gt=0, description="host link for swapping KV, gigabits per second (bits, as rate_mbps); "
        "null: transfers are free and instantaneous"
    )
    kv_bytes_per_token: int = Field(
        131_072, gt=0, description="KV cache bytes per token: 128 KiB is Llama-3-8B in fp16 (config.json: "
        "32 layers x 8 KV heads x 128 head dim x 2 (K and V) x 2 bytes)"
    )
    replicas: int = Field(
        1, ge=1, le=MAX_REPLICAS, description="copies of this node (GPUs, data parallel), each with its own KV "
        "memory, budget and scheduler; a request goes to one of them (server.router) when it reaches the server"
    )
    router: Literal["round_robin", "least_outstanding", "prefix_affinity"] = Field(
        "round_robin", description="which replica serves a request (sim/model/router.py): round_robin in turn; "
        "least_outstanding the one holding fewest unfinished requests (ties in turn); prefix_affinity the "
        "replica that served the request's shared prefix last, within a bounded load (else least_outstanding)"
    )

    prefix_cache: PrefixCacheSpec | None = Field(
        None, description="a cache of shared prompt prefixes in KV memory: a strategy (static, fluid, frequency) "
        "or {strategy, ...}; null or none: no cache"
    )

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("prefix_cache", mode="before")
    @classmethod
    def _cache_strategy(cls, v: Any) -> Any:
        if v == "none":  # a sweep grid's no-cache value
            return None
        return {"strategy": v} if isinstance(v, str) else v


# --------------------------------------------------------------------------- workload and readers
class Poisson(_Model):
    kind: Literal["poisson"]
    rate_per_s: float = Field(gt=0)


class Periodic(_Model):
    kind: Literal["periodic"]
    rate_per_s: float = Field(gt=0)


class Bursty(_Model):
    """On/off Poisson: rate_on_per_s during on_s, nothing during off_s (seed 002's bursty scenario)."""

    kind: Literal["bursty"]
    rate_on_per_s: float = Field(gt=0)
    on_s: float = Field(gt=0)
    off_s: float = Field(ge=0)


class Gamma(_Model):
    """A renewal process with i.i.d. Gamma inter-arrival times: mean 1/rate_per_s, shape k, so the gaps'
    squared coefficient of variation is 1/k (k = 1 is Poisson, k < 1 is bursty, k > 1 is smoother).
    Andes (arXiv 2404.16283) drives its bursty experiments this way: its artifact's request dispatcher
    (vLLM 0.6.1 fork, examples/request_dispatcher/request_dispatcher.py, ``--burst``) draws
    Gamma(shape, scale = 1 / (rate x shape)) gaps, with shape 0.1 for its bursts."""

    kind: Literal["gamma"]
    rate_per_s: float = Field(gt=0)
    shape: float = Field(gt=0, description="k: the gaps' CV^2 is 1/k (Andes' bursts: 0.1)")


MIN_CYCLE_S = 0.01  # a repeating cycle shorter than this is a typo (and millions of empty cycles to draw)
PhaseArrivals = Annotated[Poisson | Gamma | Periodic, Field(discriminator="kind")]


class Phase(_Model):
    """One stretch of a piecewise arrival process. Its process starts afresh at the phase's start
    (as if an arrival had just happened there, without counting it) and is cut at its end."""

    duration_s: float = Field(gt=0)
    arrivals: PhaseArrivals


class Phases(_Model):
    """Piecewise arrivals: each phase's process in turn (Poisson, then a Gamma burst, then Poisson).
    Arrivals end with the last phase, or after ``streams`` requests if sooner; with ``repeat`` the
    phases cycle until ``streams`` requests (or max_duration_s). Each phase draws from its own random
    stream, so changing one phase's rate leaves the others' arrivals where they were."""

    kind: Literal["phases"]
    repeat: bool = Field(False, description="cycle through the phases again when the last one ends")
    phases: list[Phase] = Field(min_length=1)

    @field_validator("phases")
    @classmethod
    def _cycle(cls, phases: list[Phase], info: ValidationInfo) -> list[Phase]:
        if info.data.get("repeat") and sum(p.duration_s for p in phases) < MIN_CYCLE_S:
            raise ValueError(f"must last at least {MIN_CYCLE_S:g} s in all to repeat")
        return phases


class RequestCsv(_Model):
    """Seed 002's requests.csv (arrival_time, prefill_length, decode_length); path relative to the scenario."""

    kind: Literal["csv"]
    file: str


Arrivals = Annotated[Poisson | Periodic | Bursty | Gamma | Phases | RequestCsv, Field(discriminator="kind")]


class Zipf(_Model):
    """Zipf popularity: prefix k (1-based) is drawn with probability proportional to 1 / k**s."""

    zipf: float = Field(ge=0, description="s: the exponent (0 is uniform)")


class PrefixSpec(_Model):
    """``workload.prefix``: requests that share a prompt prefix (a system prompt, a conversation so far, a
    popular document). There are ``groups`` prefixes, each of a length drawn once from ``tokens``; a
    request has one with probability ``share``, picked by ``popularity``, and its prompt is that prefix
    followed by its own ``prompt_tokens``. Drawn from its own random stream: a scenario without it draws
    the same requests as before."""

    groups: int = Field(gt=0, description="number of distinct prefixes")
    tokens: Dist = Field(description="each prefix's length in tokens (drawn once per prefix)")
    popularity: Literal["uniform"] | Zipf = Field("uniform", description="uniform, or {zipf: s}")
    share: float = Field(1.0, ge=0, le=1, description="fraction of requests that carry a prefix")


class WorkloadSpec(_Model):
    arrivals: Arrivals
    streams: int = Field(gt=0, description="number of requests (arrivals stop after this many)")
    prompt_tokens: Dist = Field(default_factory=lambda: {"dist": "uniform", "low": 100, "high": 600})  # type: ignore[assignment]
    output_tokens: Dist = Field(  # type: ignore[assignment]
        default_factory=lambda: {"dist": "lognormal", "median": 250, "sigma": 0.5, "min": 20, "max": 1500}
    )
    bytes_per_token: int = Field(
        256, gt=0, description="bytes per token on the wire: an OpenAI-style `data: {...chat.completion.chunk...}` "
        "SSE event in its HTTP chunk (226-253 B measured from tokenpace's server; live mode pads to this)"
    )
    paths: dict[str, float] | None = Field(None, description="path name -> weight; default: equal weights")
    prefix: PrefixSpec | None = Field(None, description="shared prompt prefixes; default none")


class ClientSpec(_Model):
    """The people reading: their pace and how long they wait before giving up."""

    reading_tps: Dist = Field(default_factory=lambda: {"dist": "uniform", "low": 8, "high": 20})  # type: ignore[assignment]
    patience_s: Dist = Field(default_factory=lambda: {"dist": "constant", "value": 10.0})  # type: ignore[assignment]
    first_token_patience_s: Dist | None = Field(None, description="patience for the first token; default patience_s")
    ttft_expected_s: float = Field(1.0, ge=0, description="TTFT the reader expects (Andes QoE)")


# --------------------------------------------------------------------------- network
class Bernoulli(_Model):
    kind: Literal["bernoulli"]
    p: float = Field(ge=0, le=1)


class _GilbertElliottParams(_Model):
    """netem's gemodel: p = P(good->bad), r = P(bad->good), loss_bad = 1-h, loss_good = 1-k (per packet)."""

    p: float = Field(ge=0, le=1)
    r: float = Field(gt=0, le=1)
    loss_bad: float = Field(1.0, ge=0, le=1)
    loss_good: float = Field(0.0, ge=0, le=1)

    @property
    def mean_loss(self) -> float:
        """Long-run loss probability: the chain's stationary share of Bad, p / (p + r)."""
        bad = self.p / (self.p + self.r)  # r > 0, so never 0/0
        return bad * self.loss_bad + (1 - bad) * self.loss_good


class GilbertElliott(_GilbertElliottParams):
    kind: Literal["gilbert_elliott"]


Loss = Annotated[Bernoulli | GilbertElliott, Field(discriminator="kind")]


class RatePoint(_Model):
    at_s: float = Field(ge=0)
    rate_mbps: float = Field(ge=0)


class CrossTraffic(_Model):
    """Bulk TCP flows sharing the path's bottleneck (downloads competing with the stream)."""

    flows: int = Field(1, ge=1)
    start_s: float = Field(0.0, ge=0)
    stop_s: float | None = Field(None, gt=0)
    cc: Literal["reno", "cubic"] = "cubic"


class PathSpec(_Model):
    """One bottleneck between the server and a group of clients. Give exactly one of
    rate_mbps, rate_schedule or trace."""

    rate_mbps: float | None = Field(None, gt=0)
    rate_schedule: list[RatePoint] | None = Field(None, min_length=1)
    trace: str | None = Field(
        None, description="Mahimahi trace file, relative to the scenario file (or a built-in name)"
    )
    rtt_ms: float = Field(40.0, gt=0, description="base round-trip propagation delay")
    queue_bytes: int | None = Field(
        None, gt=0, description="drop-tail bottleneck buffer; default one BDP, at least 64 KB"
    )
    loss: Loss | None = None
    cc: Literal["reno", "cubic"] = "cubic"
    mss_bytes: int = Field(1448, ge=88, le=65_000)
    init_cwnd_pkts: int = Field(10, ge=1)
    cross_traffic: CrossTraffic | None = None

    @model_validator(mode="after")
    def _one_rate(self) -> PathSpec:
        given = [k for k in ("rate_mbps", "rate_schedule", "trace") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of rate_mbps, rate_schedule, trace (got {given or 'none'})")
        return self


# --------------------------------------------------------------------------- faults
class _Fault(_Model):
    at_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)
    path: str | None = Field(None, description="path name; unset = every path")

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s


class DelayFault(_Fault):
    kind: Literal["delay"]
    delay_ms: float = Field(gt=0, description="added one-way delay on the downlink")
    jitter_ms: float = Field(0.0, ge=0, description="live (netem) only; the simulator keeps delay constant")


class LossFault(_Fault):
    kind: Literal["loss"]
    p: float = Field(gt=0, le=1)


class GilbertElliottFault(_Fault, _GilbertElliottParams):
    kind: Literal["gilbert_elliott"]


class RateFault(_Fault):
    kind: Literal["rate"]
    factor: float | None = Field(None, gt=0)
    rate_mbps: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> RateFault:
        if (self.factor is None) == (self.rate_mbps is None):
            raise ValueError("give exactly one of factor, rate_mbps")
        return self


class OutageFault(_Fault):
    kind: Literal["outage"]


Fault = Annotated[
    DelayFault | LossFault | GilbertElliottFault | RateFault | OutageFault, Field(discriminator="kind")
]


# --------------------------------------------------------------------------- the scenario
class SloSpec(_Model):
    qoe: float = Field(0.9, ge=0, le=1, description="a stream meets the SLO when its QoE is at least this")


class Scenario(_Model):
    name: str
    description: str = ""
    seed: int = 1
    control_interval_s: float = Field(0.1, gt=0)
    max_duration_s: float = Field(600.0, gt=0, description="hard stop of the run (simulated seconds)")
    server: ServerSpec = ServerSpec()
    workload: WorkloadSpec
    clients: ClientSpec = ClientSpec()
    paths: dict[str, PathSpec] = Field(min_length=1)
    faults: list[Fault] = Field(default_factory=list)
    controllers: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"unpaced": {}, "fixed": {}},
        description="controller name -> its parameters (validated by the controller)",
    )
    slo: SloSpec = SloSpec()

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        for i, f in enumerate(self.faults):
            if f.path is not None and f.path not in self.paths:
                raise ValueError(f"faults.{i}.path: unknown path {f.path!r} (paths: {', '.join(self.paths)})")
        for name in self.workload.paths or {}:
            if name not in self.paths:
                raise ValueError(f"workload.paths: unknown path {name!r} (paths: {', '.join(self.paths)})")
        return self

    def faults_for(self, path: str) -> list[Any]:
        return [f for f in self.faults if f.path is None or f.path == path]
