"""The clock-free model the simulator and live mode share (DESIGN.md: ``sim/model/``).

Time is an argument everywhere here; nothing in this package imports simpy or asyncio. A SimPy
process (``sim/node.py``) and an asyncio task (the live engine) are two thin drivers of it.
"""
