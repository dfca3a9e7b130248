"""The live half of tokenpace: the same controllers, fed by real kernel TCP telemetry (eBPF),
pacing real streams from an OpenAI-compatible server, with faults applied on real interfaces.

Importing this package needs no root and no bcc; the parts that do import them lazily.
"""
