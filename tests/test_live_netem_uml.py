"""The netem fault backend, run for real: every fault kind of the scenario schema, applied through
``live.kernel.faults.FaultPlayer(backend="netem")`` inside a user-mode-linux kernel that has sch_netem, and
each effect measured on the far end of a veth pair (``live/kernel/uml.py`` boots it and measures).

This host kernel has no sch_netem, and users' stock kernels do: without this test the backend they
get would never have run. One boot (about a minute; two on a busy 2-core host) serves every test here;
each figure is judged against the guest's own no-fault baseline from the same boot, and each
statistical band is sized in ``live/kernel/uml.py`` so that it cannot flake (the arithmetic is there).
With ``TOKENPACE_REQUIRE_LIVE=1`` a missing UML fails instead of skipping (``scripts/setup_live.sh``
installs it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import require_live, unavailable

from live.kernel import uml
from live.kernel.faults import QDISC_HANDLE
from tests.cli_fuzz import call_main

PHASES = ("delay", "jitter", "loss", "gilbert_elliott", "rate", "outage", "transition")


@pytest.fixture(scope="module")
def booted() -> Iterator[uml.Boot]:
    """One UML boot for the module: the guest's figures (fails or skips like any live test)."""
    require_live()
    reason = uml.uml_unavailable_reason()
    if reason is not None:
        unavailable(reason)
    b = uml.boot_uml(["guest"])
    problem = b.failure()
    assert problem is None, problem
    assert b.result is not None
    r = b.result
    print(f"\nUML {r['kernel']}: booted in {b.boot_s or math.nan:.1f} s, {b.wall_s:.1f} s in all, "
          f"{r['guest_s']:.1f} s measuring; phases {r['phases_s']}")
    for v in uml.judge(r):
        print(f"  {'ok' if v.ok else 'FAIL':>4} {v.name}: {v.measured} [expected {v.expected}]")
    yield b


@pytest.fixture
def r(booted: uml.Boot) -> dict[str, Any]:
    assert booted.result is not None
    return booted.result


@pytest.mark.live
def test_uml_boots_with_netem_and_the_backend_takes_the_veth(booted: uml.Boot, r: dict[str, Any]) -> None:
    assert r["kernel"].split(".")[0].isdigit() and r["netem_available"] is True
    assert booted.boot_s is not None and 0 < booted.boot_s < booted.wall_s < uml.DEFAULT_TIMEOUT_S
    assert QDISC_HANDLE not in r["qdisc_before"]
    # the player picked netem and said so, once per fault it played (7 players)
    assert sum("backend netem on" in line for line in r["log"]) == len(PHASES)
    for name in PHASES:
        shaped = r[name]["qdisc"] if name != "transition" else r[name]["before"]["qdisc"]
        assert shaped.startswith(f"qdisc netem {QDISC_HANDLE} root"), (name, shaped)


@pytest.mark.live
def test_delay_adds_its_ms_to_the_rtt(r: dict[str, Any]) -> None:
    base, d = r["baseline"], r["delay"]
    assert "delay 100ms" in d["qdisc"]
    # netem never releases early: every echo took the whole delay
    assert d["rtt_ms_min"] >= uml.DELAY_MS
    # the median RTT is the no-fault RTT + the delay + how late the idle guest wakes (measured in the
    # same phase; ms on a busy host), within 10 % of the delay
    want = base["rtt_ms_median"] + uml.DELAY_MS + d["wake_late_ms_median"]
    assert abs(d["rtt_ms_median"] - want) <= 0.1 * uml.DELAY_MS, (d, base)


@pytest.mark.live
def test_delay_jitter_has_the_asked_for_spread(r: dict[str, Any]) -> None:
    """The same 2 ms-spaced stream under the delay alone, then with 20 ms of normal jitter: the median
    stays, and the spread grows by netem's sigma in quadrature (the guest's own noise measured by the
    first run). sigma = IQR/1.349 over 800 samples has a 4.1 % error of its own: +-25 % is 6 sigma."""
    j, d0, base = r["jitter"]["one_way"], r["delay"]["one_way"], r["baseline"]
    assert "delay 100ms  20ms" in r["jitter"]["qdisc"]
    assert j["n"] == d0["n"] == uml.JITTER_PACKETS
    assert abs(d0["median_ms"] - base["one_way_ms_median"] - uml.DELAY_MS) <= 0.1 * uml.DELAY_MS, d0
    assert abs(j["median_ms"] - d0["median_ms"]) <= 0.1 * uml.DELAY_MS, (j, d0)
    netem_sigma = math.sqrt(max(0.0, j["sigma_ms"] ** 2 - d0["sigma_ms"] ** 2))
    assert abs(netem_sigma - uml.JITTER_MS) <= uml.JITTER_BAND * uml.JITTER_MS, (j, d0)


@pytest.mark.live
def test_bernoulli_loss_rate_over_6000_packets(r: dict[str, Any]) -> None:
    lo = r["loss"]
    assert lo["sent"] == 6000 and lo["distinct"] == lo["received"]
    # every datagram that did not arrive was dropped by our netem, none elsewhere
    assert lo["received"] + lo["netem_dropped"] == lo["sent"]
    # p = 0.1, N = 6000: sigma = sqrt(0.1 * 0.9 / 6000) = 0.00387; +-0.02 is 5.2 sigma
    assert abs(1 - lo["received"] / lo["sent"] - uml.LOSS_P) <= uml.LOSS_BAND, lo


@pytest.mark.live
def test_gilbert_elliott_loses_in_bursts_of_mean_one_over_r(r: dict[str, Any]) -> None:
    ge = r["gilbert_elliott"]
    assert "loss gemodel" in ge["qdisc"]
    assert ge["received"] + ge["netem_dropped"] == ge["sent"]
    # ~1140 bursts expected (one per 1/p + 1/r = 14 packets); the mean burst of a geometric with
    # r = 0.25 is 4 (variance 12): sigma over 1000 bursts 0.11, the +-0.6 band is 5.5 sigma
    assert ge["bursts"] >= uml.GE_MIN_BURSTS
    assert abs(ge["mean_burst"] - 1 / uml.GE_R) <= uml.GE_BURST_BAND / uml.GE_R, ge
    # Bernoulli loss at the same mean rate (0.286) would give bursts of 1.4 and rarely one of 10
    assert ge["max_burst"] >= 10
    mean_loss = uml.GE_P / (uml.GE_P + uml.GE_R)
    assert abs(1 - ge["received"] / ge["sent"] - mean_loss) <= 0.05


@pytest.mark.live
def test_rate_caps_a_bulk_tcp_transfer(r: dict[str, Any]) -> None:
    ra, base = r["rate"], r["baseline"]
    assert "rate 8Mbit" in ra["qdisc"]
    assert base["tcp_goodput_mbps"] >= 2 * uml.RATE_MBPS  # unshaped, the guest moves far more
    # netem charges each 1448-byte segment its 1514 bytes on the wire
    want = uml.RATE_MBPS * uml.TCP_PAYLOAD_BYTES / uml.TCP_WIRE_BYTES
    assert abs(ra["goodput_mbps"] - want) <= uml.RATE_TOLERANCE * want, ra


@pytest.mark.live
def test_outage_delivers_nothing_then_everything(r: dict[str, Any]) -> None:
    o = r["outage"]
    assert "loss 100%" in o["qdisc"]
    assert o["received_during"] == 0 and o["netem_dropped"] == o["sent"] == uml.OUTAGE_PACKETS
    assert o["received_after"] == o["sent"]


@pytest.mark.live
def test_a_rate_fault_that_ends_leaves_no_rate_behind(r: dict[str, Any]) -> None:
    """One player, a timeline: the rate fault ends at 1 s, the delay fault goes on. netem keeps a rate
    that `tc qdisc change` does not mention; before the fix the 2 Mbit/s stayed (a 497 ms burst)."""
    t, base = r["transition"], r["baseline"]
    assert t["before"]["shape"] == "rate 2 Mbit/s, delay 30 ms"
    assert t["after"]["shape"] == "delay 30 ms" and t["after"]["changes"] == 2
    assert "rate 2Mbit" not in t["after"]["qdisc"]
    a = t["after"]
    assert a["received"] == uml.TRANSITION_BURST
    spread_ms = a["last_ms"] - a["first_ms"]
    base_spread_ms = base["burst"]["last_ms"] - base["burst"]["first_ms"]
    stuck_ms = uml.TRANSITION_BURST * (uml.UDP_PAYLOAD_BYTES + 42) * 8 / (uml.TRANSITION_RATE_MBPS * 1e3)
    assert spread_ms <= base_spread_ms + 0.2 * stuck_ms, (a, base["burst"])
    # the delay stayed: nothing came before it (the upper end only allows for a host stall)
    assert uml.TRANSITION_DELAY_MS <= a["first_ms"] <= uml.TRANSITION_DELAY_MS + 0.2 * stuck_ms


@pytest.mark.live
def test_cleanup_removes_every_qdisc_of_ours(r: dict[str, Any]) -> None:
    for name in PHASES:
        assert QDISC_HANDLE not in r[name]["qdisc_after"], (name, r[name]["qdisc_after"])
    assert r["qdisc_final"].startswith("qdisc noqueue 0: root") and not r["ours_left"]


@pytest.mark.live
def test_every_judgement_of_the_cli_passes(r: dict[str, Any]) -> None:
    bad = [v for v in uml.judge(r) if not v.ok]
    assert not bad, bad


# --------------------------------------------------------------------------- no UML needed
def _passing_result() -> dict[str, Any]:
    """Figures shaped like a guest's, each at the value its fault asks for."""
    burst = {"received": 100.0, "send_ms": 0.0, "first_ms": 0.1, "last_ms": 5.0}
    return {
        "kernel": "6.1.0", "netem_available": True, "log": [], "qdisc_final": "qdisc noqueue 0: root",
        "ours_left": False,
        "baseline": {"rtt_ms_median": 0.3, "one_way_ms_median": 0.05, "tcp_goodput_mbps": 900.0, "burst": burst},
        "delay": {"rtt_ms_median": 100.6, "rtt_ms_min": 100.3, "wake_late_ms_median": 0.3,
                  "one_way": {"n": 800, "median_ms": 100.3, "sigma_ms": 0.5}},
        "jitter": {"one_way": {"n": 800, "median_ms": 100.4, "sigma_ms": 20.1}},
        "loss": {"sent": 6000, "received": 5400, "netem_dropped": 600},
        "gilbert_elliott": {"sent": 16000, "received": 11430, "netem_dropped": 4570, "bursts": 1140,
                            "mean_burst": 4.0, "max_burst": 25},
        "rate": {"goodput_mbps": 7.65},
        "outage": {"sent": 500, "received_during": 0, "received_after": 500},
        "transition": {"after": {"received": 100.0, "first_ms": 30.2, "last_ms": 35.0}},
    }


def test_judge_passes_figures_at_their_targets_and_fails_each_miss() -> None:
    good = _passing_result()
    assert all(v.ok for v in uml.judge(good)), [v for v in uml.judge(good) if not v.ok]
    misses = {  # one wrong figure each, and the judgement that must catch it
        "delay": ("delay", "rtt_ms_median", 80.0),
        "delay one-way": ("delay", "one_way", {"n": 800, "median_ms": 60.0, "sigma_ms": 0.5}),
        "delay+jitter median": ("jitter", "one_way", {"n": 800, "median_ms": 120.0, "sigma_ms": 20.1}),
        "delay+jitter spread": ("jitter", "one_way", {"n": 800, "median_ms": 100.4, "sigma_ms": 5.0}),
        "loss": ("loss", "received", 5700),
        "gilbert-elliott bursts": ("gilbert_elliott", "mean_burst", 1.4),
        "rate": ("rate", "goodput_mbps", 16.0),
        "outage": ("outage", "received_during", 3),
        "cleanup": (None, "ours_left", True),
    }
    for name, (section, key, value) in misses.items():
        bad = copy.deepcopy(good)
        (bad[section] if section else bad)[key] = value
        verdict = {v.name: v.ok for v in uml.judge(bad)}
        assert verdict[name] is False, name
    stuck = copy.deepcopy(good)  # the 2 Mbit/s rate left in place after its fault ended
    stuck["transition"]["after"]["last_ms"] = 30.2 + 497
    assert {v.name: v.ok for v in uml.judge(stuck)}["rate fault ends"] is False


def test_bursts_counts_runs_of_missing_numbers_inside_the_stream() -> None:
    got = [0, 1, 4, 5, 9, 10]  # missing 2-3 (2), 6-8 (3); 11 is cut by the end, so unknown
    assert uml._bursts(got, 12) == [2, 3]
    assert uml._bursts([3, 5], 6) == [1]  # 0-2 cut by the start


def test_cli_refuses_bad_flags_and_the_guest_command_on_the_host() -> None:
    for argv, flag in ((["--timeout-s", "-1"], "--timeout-s"), (["--timeout-s", "nan"], "--timeout-s"),
                       (["--mem-mb", "12"], "--mem-mb"), (["--json", "/nonexistent/x.json"], "--json"),
                       (["--json", "/tmp"], "--json")):
        ended = call_main(uml.main, argv).check(allowed=(2,))
        assert flag in ended.err
    ended = call_main(uml.main, ["guest", "--out", "/nonexistent/x.json"]).check(allowed=(2,))
    assert "inside the UML guest" in ended.err
    assert math.isfinite(uml.DEFAULT_TIMEOUT_S)


@pytest.mark.live
def test_doctor_tells_a_user_without_netem_how_to_run_this_check(live: None) -> None:
    from live.kernel.doctor import check_netem
    from live.kernel.faults import netem_available

    c = check_netem()
    if netem_available():
        assert c.status == "ok"
    else:
        assert c.status == "WARN" and uml.CHECK_COMMAND in c.fix and "user-mode-linux" in c.fix


def test_netem_applier_lifts_a_rate_it_no_longer_wants(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands behind the fix the UML run found: netem keeps a rate that `tc qdisc change` does not
    mention, so once a rate was set, a shape without one sends an effectively unlimited rate."""
    import subprocess
    from types import SimpleNamespace

    from live.kernel import faults
    from live.kernel.faults import NETEM_UNLIMITED_RATE, Shape

    calls: list[list[str]] = []

    def run(argv: list[str], netns: str | None, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(faults, "_run", run)
    a = faults._Applier("x0", None, "netem", SimpleNamespace(root_qdisc=False, save=lambda: None),  # type: ignore[arg-type]
                        1514, lambda m: None)
    for shape in (Shape(rate_mbps=2, delay_ms=30, queue_bytes=65536), Shape(delay_ms=30),
                  Shape(delay_ms=30, loss=0.1), Shape(), Shape(delay_ms=30)):
        a.apply(shape)
    verbs = [c[2] for c in calls]
    assert verbs == ["replace", "change", "change", "del", "replace"]
    rates = [c[c.index("rate") + 1] if "rate" in c else None for c in calls]
    assert rates == ["2000000bit", NETEM_UNLIMITED_RATE, NETEM_UNLIMITED_RATE, None, None]
