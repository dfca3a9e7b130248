"""``python -m live client``: the load generator, asyncio timers driving the simulator's reader model
(:mod:`sim.model.reader`) over real HTTP streams."""
