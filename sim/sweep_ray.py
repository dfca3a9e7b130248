"""The Ray backend of ``python -m sim sweep``: the same (cell, seed) runs as Ray tasks.

Ray (https://docs.ray.io, the optional extra ``pip install 'tokenpace[ray]'``) schedules each run
as a task of one CPU. Without ``--address`` it starts a local instance with ``--jobs`` CPUs for the
sweep's length (``ray.init(num_cpus=jobs)``) and the tasks write their folders straight into the
results folder, as the local pool's processes do. With ``--address`` it joins that cluster; a task
there may run on another machine, so it runs in a scratch folder and sends the files back
(:func:`sim.sweep_cell.pack_folder`), and the driver writes them. Each task calls the same function as
the local pool (:func:`sim.sweep_cell.run_cell`), whose output depends only on the cell's scenario, the
seed and the controllers: the results are the same file for file. The cluster's nodes need
tokenpace installed (the same version) and any trace or request file the base scenario names at
the same path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from analysis.results import sigterm_as_ctrl_c
from sim.model.entries import Plan
from sim.sweep_cell import run_cell

OBJECT_STORE_BYTES = 256 << 20  # a local instance's shared memory: results are a summary each (or a tar)
WAIT_S = 0.25


def run_ray(plans: list[Plan], jobs: int, address: str | None, done: Callable[[int, dict[str, Any]], None],
            tick: Callable[[], None]) -> None:
    """Run each plan as a Ray task; ``done(index, result)`` in this process as each ends. Ctrl-C (or
    SIGTERM) cancels every task still queued or running, then leaves Ray."""
    import ray

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR}
        if address is None:
            kwargs.update(num_cpus=jobs, object_store_memory=OBJECT_STORE_BYTES)
        else:
            kwargs["address"] = address
        ray.init(**kwargs)
        started = True
    ship = address is not None
    task = ray.remote(num_cpus=1, max_retries=0)(run_cell)
    refs: dict[Any, int] = {}
    try:
        with sigterm_as_ctrl_c():  # ray.init may have put its own SIGTERM handler in place
            refs = {task.remote(plan, ship): i for i, plan in enumerate(plans)}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_S, fetch_local=True)
                for ref in sorted(ready, key=refs.__getitem__):
                    done(refs[ref], ray.get(ref))
                tick()
    except BaseException:
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            with contextlib.suppress(Exception):
                ray.shutdown()
