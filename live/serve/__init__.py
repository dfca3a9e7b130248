"""The paced streaming server: OpenAI-compatible endpoints, one controller per streamed response.

``config`` (what ``python -m live`` decides), ``protocol`` (requests, errors and response chunks in
OpenAI's shapes), ``app`` (the aiohttp app, its routes, /hint and /metrics), ``sse`` (the SSE wire
format), ``pump`` (the one write loop of both backends), ``pacing`` (per-connection sockets, the
control loop and the server's metrics) and ``backends/`` (the built-in engine, the upstream proxy).
"""
