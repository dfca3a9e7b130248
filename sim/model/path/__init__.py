"""The network path, clock-free: capacity, loss, the bottleneck queue and a scenario path as one model.

Written once and driven twice: ``sim.link`` turns the bottleneck's arrival times into SimPy events,
``live.lab.tunlink`` into writes of real packets; ``sim.oracle`` reads the same model ahead, and
``live.kernel.faults`` sizes its queues by the same rule. Nothing here imports simpy or asyncio.

* ``capacity``: how fast the bottleneck drains (constant, schedule, Mahimahi trace, fault windows);
* ``loss``: whether a packet is lost (Bernoulli, Gilbert-Elliott, loss-fault windows);
* ``bottleneck``: loss, drop-tail FIFO virtual queue, propagation: ``offer(now_s, size) -> arrival``;
* ``model``: ``PathModel.from_spec(spec, faults, base_dir)``, a scenario path with its faults.
"""

from sim.model.path.bottleneck import Bottleneck
from sim.model.path.capacity import (
    MTU_BYTES,
    Capacity,
    ConstantCapacity,
    FaultedCapacity,
    RateWindow,
    ScheduleCapacity,
    TraceCapacity,
)
from sim.model.path.loss import (
    BernoulliLoss,
    GilbertElliottLoss,
    LossModel,
    NoLoss,
    TimedLoss,
    gilbert_elliott_mean_loss,
)
from sim.model.path.model import (
    CAPACITY_GRID_S,
    MIN_QUEUE_BYTES,
    CapacityGrid,
    PathModel,
    PathShape,
    default_queue_bytes,
    nominal_rate_bps,
)

__all__ = [
    "CAPACITY_GRID_S",
    "MIN_QUEUE_BYTES",
    "MTU_BYTES",
    "BernoulliLoss",
    "Bottleneck",
    "Capacity",
    "CapacityGrid",
    "ConstantCapacity",
    "FaultedCapacity",
    "GilbertElliottLoss",
    "LossModel",
    "NoLoss",
    "PathModel",
    "PathShape",
    "RateWindow",
    "ScheduleCapacity",
    "TimedLoss",
    "TraceCapacity",
    "default_queue_bytes",
    "gilbert_elliott_mean_loss",
    "nominal_rate_bps",
]
