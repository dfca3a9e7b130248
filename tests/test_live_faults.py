"""Fault timelines: how faults fold into a link shape, what each backend is told, that the tc-bpf
dropper loses packets with the asked-for statistics, and that nothing of ours is left behind.

Pure tests run anywhere; ``@pytest.mark.live`` ones run in fresh namespaces (root + kernel).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from pydantic import TypeAdapter

from live.kernel.faults import (
    FILTER_PREF,
    STATE_DIR,
    FaultPlayer,
    GeLoss,
    Shape,
    UnsupportedFault,
    _netem_args,
    _tbf_args,
    change_times,
    shape_at,
)
from scenarios.schema import Fault, PathSpec

_FAULT: TypeAdapter[Any] = TypeAdapter(Fault)


def fault(**kw: Any) -> Any:
    """A validated fault model from keyword arguments (as a scenario file would give it)."""
    return _FAULT.validate_python(kw)


ALL_KINDS = [
    fault(kind="loss", at_s=0.0, duration_s=0.3, p=0.05),
    fault(kind="rate", at_s=0.1, duration_s=0.3, rate_mbps=5),
    fault(kind="gilbert_elliott", at_s=0.3, duration_s=0.2, p=0.1, r=0.3),
    fault(kind="delay", at_s=0.2, duration_s=0.2, delay_ms=20),
    fault(kind="outage", at_s=0.5, duration_s=0.2),
]


# --------------------------------------------------------------------------- folding faults into shapes
def test_shape_folds_active_faults_over_the_path():
    base = PathSpec.model_validate({"rate_mbps": 10, "rtt_ms": 40, "loss": {"kind": "bernoulli", "p": 0.01}})
    faults = [
        fault(kind="loss", at_s=1, duration_s=2, p=0.1),
        fault(kind="rate", at_s=2, duration_s=2, factor=0.25),
        fault(kind="delay", at_s=2.5, duration_s=1, delay_ms=100, jitter_ms=10),
        fault(kind="outage", at_s=5, duration_s=1),
    ]
    assert shape_at(0.5, faults, base) == Shape(rate_mbps=10, delay_ms=40, loss=0.01, queue_bytes=65536)
    s = shape_at(2.7, faults, base)
    assert s.rate_mbps == pytest.approx(2.5) and s.delay_ms == 140 and s.jitter_ms == 10
    assert s.loss == pytest.approx(1 - 0.99 * 0.9)  # independent drops
    assert shape_at(3.0, faults, base).loss == pytest.approx(0.01)  # the loss fault ended at 3.0
    assert shape_at(5.5, faults, base).outage and not shape_at(6.0, faults, base).outage
    assert change_times(faults, base) == [0.0, 1, 2, 2.5, 3, 3.5, 4, 5, 6]
    with pytest.raises(UnsupportedFault):  # without a base, `factor` has nothing to scale
        shape_at(2.1, faults)


def test_gilbert_elliott_combines_with_bernoulli_and_has_netems_mean():
    ge = GeLoss(p=0.05, r=0.2, loss_bad=0.8, loss_good=0.01)
    assert ge.mean_loss == pytest.approx(0.2 * 0.8 + 0.8 * 0.01)
    faults = [fault(kind="gilbert_elliott", at_s=0, duration_s=1, p=0.05, r=0.2, loss_bad=0.8,
                                  loss_good=0.01), fault(kind="loss", at_s=0, duration_s=1, p=0.5)]
    s = shape_at(0.5, faults)
    assert isinstance(s.loss, GeLoss)
    assert s.loss.loss_bad == pytest.approx(1 - 0.2 * 0.5) and s.loss.loss_good == pytest.approx(1 - 0.99 * 0.5)


def test_backend_arguments():
    shape = Shape(rate_mbps=2.5, delay_ms=50, jitter_ms=5, loss=GeLoss(p=0.01, r=0.25, loss_bad=0.9, loss_good=0.001),
                  queue_bytes=30000)
    assert _netem_args(shape, 1514) == ["netem", "limit", "20", "delay", "50ms", "5ms", "distribution", "normal",
                                        "loss", "gemodel", "1%", "25%", "90%", "0.1%", "rate", "2500000bit"]
    assert _netem_args(Shape(loss=0.0025), 1514)[-3:] == ["loss", "random", "0.25%"]
    assert _netem_args(Shape(outage=True, delay_ms=10), 1514)[-3:] == ["loss", "random", "100%"]
    assert _tbf_args(Shape(rate_mbps=5, queue_bytes=65536), 1514) == [
        "tbf", "rate", "5000000bit", "burst", "3028", "limit", "65536"]


def test_fallback_plans_drop_what_they_cannot_do_and_strict_refuses():
    fb = FaultPlayer("x0", ALL_KINDS, "fallback")
    shapes = [s for _, s in fb.plan()]
    assert all(s.delay_ms == 0 for s in shapes)
    assert any(isinstance(s.loss, GeLoss) for s in shapes)
    nft = FaultPlayer("x0", ALL_KINDS, "fallback-nft")
    assert not any(isinstance(s.loss, GeLoss) for _, s in nft.plan())  # approximated by Bernoulli
    assert [t for t, _ in FaultPlayer("x0", ALL_KINDS, "netem").plan()] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7]
    with pytest.raises(UnsupportedFault, match="delay"):
        FaultPlayer("x0", ALL_KINDS, "fallback", strict=True, log=lambda m: None).start()


# --------------------------------------------------------------------------- live: nothing of ours left
def ours(pair) -> list[str]:
    """Lines of tc / nft state on side a that tokenpace would have created."""
    found = []
    qd = pair.run("a", ["tc", "qdisc", "show", "dev", pair.if_a]).stdout
    found += [line for line in qd.splitlines() if "7a1e:" in line or "clsact" in line]
    flt = pair.run("a", ["tc", "filter", "show", "dev", pair.if_a, "egress"], check=False).stdout
    found += [line for line in flt.splitlines() if f"pref {FILTER_PREF} " in line]
    found += [line for line in pair.run("a", ["nft", "list", "tables"]).stdout.splitlines() if "tokenpace" in line]
    return found


@pytest.mark.live
@pytest.mark.parametrize("backend", ["fallback", "fallback-nft"])
def test_player_leaves_nothing_after_exit_and_after_exception(veth, backend):
    for fail in (False, True):
        try:
            with FaultPlayer(veth.if_a, ALL_KINDS, backend, netns=veth.ns_a, handle_signals=False,
                             log=lambda m: None) as fp:
                time.sleep(max(0.0, 0.2 - fp.elapsed_s()))
                assert ours(veth), "the player should have installed something by now"
                if fail:
                    raise ValueError("boom")
                assert fp.wait(30.0), "the timeline (0.7 s of changes) was not played in 30 s"
                assert any(s.rate_mbps == 5 for _, s in fp.history)
                assert fp.current().is_clear
        except ValueError:
            assert fail
        assert ours(veth) == [], f"left behind ({backend}, exception={fail})"
        assert not any(p.name.endswith(f"-{veth.if_a}.json") for p in STATE_DIR.glob("*"))


@pytest.mark.live
def test_player_keeps_what_others_created(veth):
    veth.run("a", ["tc", "qdisc", "add", "dev", veth.if_a, "clsact"])
    veth.run("a", ["tc", "filter", "add", "dev", veth.if_a, "egress", "pref", "100", "bpf", "bytecode", "1,6 0 0 0,"])
    veth.run("a", ["nft", "add", "table", "inet", "someone_else"])
    with FaultPlayer(veth.if_a, ALL_KINDS, "fallback", netns=veth.ns_a, handle_signals=False, log=lambda m: None) as fp:
        assert fp.wait(30.0), "the timeline (0.7 s of changes) was not played in 30 s"
    qd = veth.run("a", ["tc", "qdisc", "show", "dev", veth.if_a]).stdout
    flt = veth.run("a", ["tc", "filter", "show", "dev", veth.if_a, "egress"]).stdout
    assert "clsact" in qd and "pref 100 " in flt and f"pref {FILTER_PREF} " not in flt
    assert "someone_else" in veth.run("a", ["nft", "list", "tables"]).stdout


@pytest.mark.live
def test_player_refuses_a_root_qdisc_it_did_not_install(veth):
    veth.run("a", ["tc", "qdisc", "add", "dev", veth.if_a, "root", "handle", "1:", "tbf", "rate", "100mbit",
                   "burst", "10000", "limit", "100000"])
    with pytest.raises(RuntimeError, match="root qdisc of its own"):
        FaultPlayer(veth.if_a, ALL_KINDS, "fallback", netns=veth.ns_a, handle_signals=False, log=lambda m: None).start()
    assert "tbf 1: root" in veth.run("a", ["tc", "qdisc", "show", "dev", veth.if_a]).stdout


PLAYER_SCRIPT = textwrap.dedent("""
    import sys, time
    from live.kernel.faults import FaultPlayer
    from scenarios.schema import LossFault, RateFault
    faults = [LossFault(kind="loss", at_s=0, duration_s=60, p=0.1),
              RateFault(kind="rate", at_s=0, duration_s=60, rate_mbps=3)]
    with FaultPlayer(sys.argv[1], faults, sys.argv[3], netns=sys.argv[2]):
        print("playing", flush=True)
        time.sleep(60)
""")


@pytest.mark.live
def test_sigterm_cleans_up_and_cleanup_main_removes_leftovers_of_a_kill(veth):
    from live.kernel.faults import cleanup_main

    for sig, backend in ((signal.SIGTERM, "fallback"), (signal.SIGKILL, "fallback"), (signal.SIGKILL, "fallback-nft")):
        proc = subprocess.Popen([sys.executable, "-c", PLAYER_SCRIPT, veth.if_a, veth.ns_a, backend],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("playing"):
                    break
            time.sleep(0.2)
            assert ours(veth)
            proc.send_signal(sig)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if sig == signal.SIGTERM:
            assert ours(veth) == [], "SIGTERM should have cleaned up"
        else:
            assert ours(veth), "a killed player leaves its qdiscs behind"
            assert cleanup_main(veth.if_a, veth.ns_a) == 0
            assert ours(veth) == []


# --------------------------------------------------------------------------- live: the dropper's statistics
def udp_losses(pair, n: int = 20000) -> list[bool]:
    """Send n numbered datagrams a -> b; which were lost, in order."""
    from live.kernel.netns import in_netns

    with in_netns(pair.ns_b):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with in_netns(pair.ns_a):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: hold all of them
        rx.bind((pair.addr_b, 0))
        rx.settimeout(0.5)
        dst = (pair.addr_b, rx.getsockname()[1])
        for i in range(n):
            tx.sendto(i.to_bytes(4, "big"), dst)
        got = set()
        while True:
            try:
                got.add(int.from_bytes(rx.recv(16), "big"))
            except TimeoutError:
                break
        return [i not in got for i in range(n)]
    finally:
        rx.close()
        tx.close()


def runs(lost: list[bool]) -> list[int]:
    out, cur = [], 0
    for x in lost:
        if x:
            cur += 1
        elif cur:
            out.append(cur)
            cur = 0
    return out + ([cur] if cur else [])


def loss_sd(loss: float, n: int, r: float | None = None, p: float | None = None) -> float:
    """Standard deviation of the loss fraction of n packets: Bernoulli, or a Gilbert-Elliott chain that
    loses everything in its bad state (moves p good->bad, r bad->good). Consecutive states are correlated
    (lag-1 correlation 1 - p - r), which multiplies the variance by (1 + c) / (1 - c)."""
    var = loss * (1 - loss) / n
    if r is not None and p is not None:
        c = 1 - p - r
        var *= (1 + c) / (1 - c)
    return math.sqrt(var)


@pytest.mark.live
def test_dropper_loses_packets_with_bernoulli_and_gilbert_elliott_statistics(veth):
    # packets per case: enough that the asked-for loss is within 0.02 at 5 sigma (a Gilbert-Elliott
    # chain's bursts make its loss fraction vary 7 times as much as independent drops do)
    cases = [
        (fault(kind="loss", at_s=0, duration_s=30, p=0.2), 0.2, 1 / 0.8, 20000, loss_sd(0.2, 20000)),
        # p/(p+r) = 0.2 of the time in the bad state losing everything: bursts of 1/r = 5 packets
        (fault(kind="gilbert_elliott", at_s=0, duration_s=30, p=0.05, r=0.2), 0.2, 5.0, 80000,
         loss_sd(0.2, 80000, r=0.2, p=0.05)),
        (fault(kind="outage", at_s=0, duration_s=30), 1.0, None, 20000, 0.0),
    ]
    for f, want_loss, want_run, n, sd in cases:
        assert 5 * sd <= 0.02
        with FaultPlayer(veth.if_a, [f], "fallback", netns=veth.ns_a, handle_signals=False,
                         log=lambda m: None) as fp:
            assert fp.history  # the t=0 shape is in place when start() returns
            lost = udp_losses(veth, n)
            _, dropped = fp.dropper_counters()
        rate = sum(lost) / len(lost)
        print(f"\n{f.kind}: loss {rate:.4f} (want {want_loss} +- {5 * sd:.4f}), mean burst "
              f"{(sum(runs(lost)) / max(1, len(runs(lost)))):.2f} (want {want_run}), dropper dropped {dropped}")
        assert rate == pytest.approx(want_loss, abs=5 * sd)
        assert dropped >= sum(lost)
        if want_run is not None:
            r = runs(lost)
            assert sum(r) / len(r) == pytest.approx(want_run, rel=0.15)
    assert udp_losses(veth, 2000).count(True) == 0  # and the link is clean again
