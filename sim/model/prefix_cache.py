"""A cache of shared prompt prefixes kept in the node's KV memory, sized as seed 004 (InferTuner) sizes its
KV cache: STATIC, FLUID or FREQUENCY, with LRU eviction (``server.prefix_cache``).

What it models. Requests may start with a shared prefix (a system prompt, a conversation so far, a popular
document: ``workload.prefix``). When a request with prefix P is admitted and P is cached, its prefill skips
P's tokens: the admit step's batch tokens are ``prompt - prefix`` (automatic prefix caching as in vLLM,
arXiv 2309.06180 sec. 4.4, and SGLang's RadixAttention, arXiv 2312.07104). The stream still holds its whole
prompt's KV; the cache holds one more copy of each cached prefix, and those tokens count in ``kv_used``, so
the cache competes with running streams for memory. Sharing the prefix is modelled as the cache holding it
once, not as streams pointing at the cache's blocks. On a miss the prefill computes P, and when the step ends
the cache keeps a copy if the memory the streams leave allows (LRU entries make way).

Under memory pressure the cache gives way first: before each step the core asks it to free what the step
may need (a decode token per running stream and the first preempted stream or waiting prompt), evicting
least recently used prefixes, so a stream is preempted only once the cache is empty.

Sizing: a size is a number of entries (prefixes), as seed 004's ``CacheEnabledInferenceProcessor``:

* ``static``: ``size`` entries, always.
* ``fluid``: every ``adjust_every`` lookups, the request rate over the last ``window_s`` (lookups in the
  window over the time since its oldest one, at least 1 s) updates a moving average (0.7 old + 0.3 new;
  the first rate sets it); above ``grow_above`` x the average the size is multiplied by ``grow_factor``
  (rounded up), under ``shrink_below`` x it is divided by ``shrink_factor`` (rounded up), within
  [``min_size``, ``max_size``].
* ``frequency``: every prefix lookup is counted in one of ``buckets`` buckets (prefix id modulo buckets:
  accesses and distinct keys per bucket, seed 004's ``SimpleFrequencyCapture``); every ``adjust_every``
  lookups (after the first 10) the buckets are taken hottest first (accesses per key) until they cover
  ``target_hit_rate`` of all accesses, and the size is the keys they hold, within [``min_size``,
  ``max_size``].

Seed 004 sets the FLUID average to 1 request/s at start; here the first measured rate does (a constant has
no meaning across scenarios' rates). A shrink evicts LRU entries at once.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Protocol

from scenarios.schema import PrefixCacheSpec

if TYPE_CHECKING:
    from sim.model.serving import NodeLog, Sequence, ServingCore

__all__ = ["FluidSizer", "FrequencySizer", "PrefixCache", "StaticSizer", "make_sizer"]

FLUID_EMA_OLD = 0.7  # seed 004: historicalAverageRate = 0.7 * old + 0.3 * current
FLUID_MIN_SPAN_S = 1.0  # seed 004: a window's rate is over at least 1 s
FREQUENCY_WARMUP = 10  # seed 004: FREQUENCY keeps its initial size before 10 lookups


class Sizer(Protocol):
    def record(self, now: float, prefix_id: int) -> None: ...
    def size(self, now: float, current: int) -> int: ...


class StaticSizer:
    """STATIC: a fixed number of entries."""

    def __init__(self, spec: PrefixCacheSpec) -> None:
        self.spec = spec

    def record(self, now: float, prefix_id: int) -> None:
        pass

    def size(self, now: float, current: int) -> int:
        return self.spec.size


class FluidSizer:
    """FLUID: grows when the request rate over a window rises above its moving average, shrinks when it falls."""

    def __init__(self, spec: PrefixCacheSpec) -> None:
        self.spec = spec
        self.times: deque[float] = deque()
        self.average: float | None = None  # requests/s, moving average of the window rates
        self.last_rate = 0.0

    def record(self, now: float, prefix_id: int) -> None:
        self.times.append(now)

    def rate(self, now: float) -> float:
        """Lookups in the last ``window_s`` over the time since the oldest of them (at least 1 s)."""
        times = self.times
        start = now - self.spec.window_s
        while times and times[0] < start:
            times.popleft()
        if not times:
            return 0.0
        return len(times) / max(now - times[0], FLUID_MIN_SPAN_S)

    def size(self, now: float, current: int) -> int:
        spec = self.spec
        rate = self.last_rate = self.rate(now)
        avg = rate if self.average is None else FLUID_EMA_OLD * self.average + (1 - FLUID_EMA_OLD) * rate
        self.average = avg
        if rate > spec.grow_above * avg:
            return min(spec.max_size, math.ceil(current * spec.grow_factor))
        if rate < spec.shrink_below * avg:
            return max(spec.min_size, math.ceil(current / spec.shrink_factor))
        return current


class FrequencySizer:
    """FREQUENCY: the fewest entries whose hottest buckets cover the target share of accesses."""

    def __init__(self, spec: PrefixCacheSpec) -> None:
        self.spec = spec
        self.accesses = [0] * spec.buckets
        self.keys = [0] * spec.buckets
        self.seen: set[int] = set()
        self.total = 0

    def record(self, now: float, prefix_id: int) -> None:
        b = prefix_id % self.spec.buckets
        self.total += 1
        self.accesses[b] += 1
        if prefix_id not in self.seen:
            self.seen.add(prefix_id)
            self.keys[b] += 1

    def estimate(self, target: float) -> int:
        """Seed 004's ``calculate``: distinct keys in the hottest buckets covering ``target`` of accesses."""
        if self.total == 0:
            return 0
        hot = sorted((b for b in range(self.spec.buckets) if self.keys[b]),
                     key=lambda b: -self.accesses[b] / self.keys[b])  # stable: ties keep bucket order
        goal = math.ceil(self.total * target)
        covered = keys = 0
        for b in hot:
            covered += self.accesses[b]
            keys += self.keys[b]
            if covered >= goal:
                break
        return keys

    def size(self, now: float, current: int) -> int:
        spec = self.spec
        if self.total < FREQUENCY_WARMUP:
            return spec.size
        est = self.estimate(spec.target_hit_rate)
        return current if est <= 0 else max(spec.min_size, min(spec.max_size, est))


def make_sizer(spec: PrefixCacheSpec) -> Sizer:
    return {"static": StaticSizer, "fluid": FluidSizer, "frequency": FrequencySizer}[spec.strategy](spec)


class PrefixCache:
    """The cached prefixes (LRU first), their KV tokens, the sizing strategy and the counts a run reports."""

    def __init__(self, spec: PrefixCacheSpec, log: NodeLog) -> None:
        self.spec = spec
        self.log = log
        self.sizer = make_sizer(spec)
        self.entries: OrderedDict[int, int] = OrderedDict()  # prefix id -> its KV tokens, least recent first
        self.kv_tokens = 0
        self.capacity = spec.size
        self.since_adjust = 0
        self.lookups = self.hits = self.evictions = 0
        self.saved_tokens = 0  # prefill tokens skipped by hits

    # ------------------------------------------------------------------ the core's hooks
    def admit(self, core: ServingCore, s: Sequence, now: float) -> None:
        """``s`` (which carries a prefix) is admitted: count the lookup, re-size every ``adjust_every``
        lookups, and on a hit mark its prefix's tokens as not prefilled (``s.cached_tokens``)."""
        pid = s.prefix_id
        assert pid is not None
        self.lookups += 1
        self.sizer.record(now, pid)
        if self.spec.strategy != "static":
            self.since_adjust += 1
            if self.since_adjust >= self.spec.adjust_every:
                self.since_adjust = 0
                self.resize(core, self.sizer.size(now, self.capacity), now)
        if pid in self.entries:
            self.entries.move_to_end(pid)
            self.hits += 1
            s.cached_tokens = min(s.prefix_tokens, s.prompt_tokens - 1)  # the last prompt token is computed
            self.saved_tokens += s.cached_tokens
            self.log.event(now, "cache_hit", s.req_id, f"prefix={pid} tokens={s.cached_tokens}")
        else:
            self.log.event(now, "cache_miss", s.req_id, f"prefix={pid} tokens={s.prefix_tokens}")

    def keep(self, core: ServingCore, prefills: list[Sequence], now: float) -> None:
        """The step ended: the prefixes its prefills computed (misses) are cached if they fit."""
        for s in prefills:
            if s.prefix_id is not None and s.cached_tokens == 0 and s.prefix_tokens > 0:
                self.insert(core, s.prefix_id, s.prefix_tokens, now)

    def make_room(self, core: ServingCore, now: float) -> None:
        """Before a step: evict LRU prefixes while the step may need more memory than is free."""
        if not self.entries:
            return
        need = len(core.running)
        if core.swapped:
            need += core.swapped[0].kv_tokens + 1
        elif core.waiting:
            need += core.waiting[0].prompt_tokens + 1
        while self.entries and core.kv_used + need > core.spec.kv_tokens:
            self.evict(core, now, "memory")

    # ------------------------------------------------------------------ mechanisms
    def insert(self, core: ServingCore, pid: int, tokens: int, now: float) -> bool:
        """Cache prefix ``pid`` (``tokens`` KV tokens), making way by LRU: past ``capacity`` entries, and
        while it does not fit beside the streams (keeping a decode token free per running stream)."""
        if pid in self.entries:
            self.entries.move_to_end(pid)
            return True
        if self.capacity <= 0:
            return False
        free = core.spec.kv_tokens - len(core.running) - (core.kv_used - self.kv_tokens)
        if tokens > free:  # not even an empty cache would hold it
            return False
        while len(self.entries) >= self.capacity:
            self.evict(core, now, "capacity")
        while core.kv_used + tokens + len(core.running) > core.spec.kv_tokens:
            self.evict(core, now, "memory")
        before = core.kv_used
        self.entries[pid] = tokens
        self.kv_tokens += tokens
        core.kv_used += tokens
        self.log.memory(now, "cache_insert", f"prefix-{pid}", before, core.kv_used, "miss")
        return True

    def evict(self, core: ServingCore, now: float, reason: str) -> None:
        """Drop the least recently used prefix."""
        pid, tokens = self.entries.popitem(last=False)
        before = core.kv_used
        self.kv_tokens -= tokens
        core.kv_used -= tokens
        self.evictions += 1
        self.log.event(now, "cache_evict", f"prefix-{pid}", f"{reason}; {tokens} KV tokens")
        self.log.memory(now, "cache_evict", f"prefix-{pid}", before, core.kv_used, reason)

    def resize(self, core: ServingCore, capacity: int, now: float) -> None:
        """A new size in entries; a shrink evicts LRU entries at once."""
        if capacity == self.capacity:
            return
        self.log.event(now, "cache_resize", "", f"{self.spec.strategy} {self.capacity}->{capacity}")
        self.capacity = capacity
        while len(self.entries) > capacity:
            self.evict(core, now, "resize")
