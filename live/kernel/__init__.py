"""The kernel side of live mode: eBPF TCP telemetry (C in ``bpf/``) and the seam the server reads it
through (``source``), faults on an interface (netem, or tbf + a tc-bpf dropper), network namespaces,
``net_data.csv`` (``netdata``), netem checked inside user-mode-linux (``uml``), what a killed run left
behind (``leftovers``) and ``python -m live doctor``.

It imports no other part of live (tests/test_import_contract.py).
"""
