"""The fluid engine: seed 002's serving node, its paths and its readers as ODEs over continuous mass.

``inputs`` (request classes, arrival rate, path rates from the scenario), ``model`` (the right-hand
side: node, fluid queues with Misra-Gong-Towsley TCP, readers), ``pacing`` (controllers that are laws
of the fluid state), ``engine`` (scipy ``solve_ivp`` between breakpoints, the summary, the time
series), ``run`` (``python -m sim SCENARIO --engine fluid``), ``stability`` (``python -m sim
stability``: the fluid fixed point, the closed-form bound of arXiv 2605.04595, a discrete search).
"""
