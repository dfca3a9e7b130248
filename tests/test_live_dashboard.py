"""The live dashboard: its data layer on files written by hand, the page through Streamlit's AppTest, and
end to end — a real live run (eBPF telemetry, a loss fault) in one namespace, the load client in the
other, ``python -m live dashboard`` on the recording, and the page loaded in headless Chromium."""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import live_import

from analysis.results import TELEMETRY_COLUMNS
from live.dashboard import data as dd

PY = sys.executable
APP = Path(dd.__file__).with_name("app.py")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _line(t: float, sid: str, srtt: float | None = None, *, rtt_min: float | None = None, p95: float | None = None,
          retrans: int = 0, rate: float | None = 20.0, buf: float = 3.0) -> str:
    cells = {"t": t, "stream_id": sid, "srtt_ms": srtt, "rtt_min_ms": rtt_min, "rtt_p95_ms": p95, "retrans": retrans,
             "cwnd_pkts": 10, "inflight_bytes": 0, "queued_bytes": 0, "acked_tokens": 5, "generated_tokens": 7,
             "reading_tps": 8.0, "client_buffer_est": buf, "rate_tps": rate}
    return ",".join("" if cells[c] is None else str(cells[c]) for c in TELEMETRY_COLUMNS) + "\n"


HEADER = ",".join(TELEMETRY_COLUMNS) + "\n"


def _row(**kw: object) -> dd.Row:
    return next(csv.DictReader([HEADER, _line(**kw)]))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- tailing telemetry.csv
def test_tail_reads_only_complete_lines_and_resumes_at_the_partial_one(tmp_path):
    f = tmp_path / "telemetry.csv"
    first = HEADER + _line(0.1, "s1", 10.0) + _line(0.1, "s2", 30.0)
    partial = _line(0.2, "s1", 12.5, p95=14.0)
    f.write_text(first + partial[:17])  # the writer is mid-row: "0.2,s1,12.5,,14.0" cut after "12"
    tail = dd.TelemetryTail(f)
    assert tail.poll() == 2
    assert tail.offset == len(first.encode())
    assert [r["srtt_ms"] for r in tail.rows["s1"]] == ["10.0"]
    assert tail.poll() == 0  # nothing complete was added
    with f.open("a") as out:
        out.write(partial[17:] + _line(0.3, "s2", 31.0)[:5])
    assert tail.poll() == 1
    assert tail.rows["s1"][-1]["srtt_ms"] == "12.5" and tail.rows["s1"][-1]["rtt_p95_ms"] == "14.0"
    assert tail.rows_read == 3 and tail.latest_t == 0.2
    assert list(tail.rows) == ["s2", "s1"]  # least recently seen first


def test_tail_header_split_across_polls_and_file_replaced(tmp_path):
    f = tmp_path / "telemetry.csv"
    f.write_text(HEADER[:20])
    tail = dd.TelemetryTail(f)
    assert tail.poll() == 0 and tail.header is None
    f.write_text(HEADER + _line(5.0, "a", 1.0) + _line(6.0, "a", 2.0))
    assert tail.poll() == 2 and tail.header == list(TELEMETRY_COLUMNS)
    f.write_text(HEADER + _line(0.5, "b", 9.0))  # a new run into the same folder: shorter file
    assert tail.poll() == 1
    assert list(tail.rows) == ["b"] and tail.rows_read == 1


def test_tail_keeps_the_last_window_seconds_per_connection(tmp_path):
    f = tmp_path / "telemetry.csv"
    lines = [_line(k * 1.0, "old", 5.0) for k in range(20)] + [_line(100.0 + k, "new", 6.0) for k in range(3)]
    f.write_text(HEADER + "".join(lines))
    tail = dd.TelemetryTail(f, window_s=5.0)
    tail.poll()
    assert [float(r["t"]) for r in tail.rows["old"]] == [14.0, 15.0, 16.0, 17.0, 18.0, 19.0]
    assert len(tail.rows["new"]) == 3  # each connection's window ends at its own newest row
    assert len(tail.window_rows()) == 9


def test_find_controller_dir_prefers_the_newest_telemetry(tmp_path):
    assert dd.find_controller_dir(tmp_path) is None
    assert dd.find_controller_dir(tmp_path / "missing") is None
    for name, mtime in (("ewma", 1000), ("pid", 3000), ("aimd", 2000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "telemetry.csv").write_text(HEADER)
        os.utime(tmp_path / name / "telemetry.csv", (mtime, mtime))
    (tmp_path / "plots").mkdir()
    assert dd.find_controller_dir(tmp_path) == tmp_path / "pid"
    assert dd.find_controller_dir(tmp_path / "aimd") == tmp_path / "aimd"


# --------------------------------------------------------------------------- summary and anomalies
def test_summary_takes_latest_known_values_and_orders_by_recency():
    rows = {
        "s1": [_row(t=1.0, sid="s1", srtt=10.0, rtt_min=8.0, p95=12.0, retrans=2),
               _row(t=2.0, sid="s1", srtt=None, rtt_min=9.0, retrans=1, rate=None, buf=4.5)],
        "s2": [_row(t=1.5, sid="s2", srtt=40.0, rtt_min=35.0, p95=50.0)],
        "s3": [_row(t=2.0, sid="s3", srtt=None)],
    }
    out = dd.summarize(rows, now_t=3.2, flags={"s1": [True, False], "s2": [True]})
    assert [s.stream_id for s in out] == ["s3", "s1", "s2"]  # newest row first, ties by larger id
    s1 = out[1]
    assert (s1.srtt_ms, s1.rtt_p95_ms, s1.rtt_min_ms, s1.retrans_window) == (10.0, 12.0, 8.0, 3)
    assert s1.rate_tps is None and s1.client_buffer_est == 4.5
    assert (s1.anomalies, s1.anomalous_now, s1.intervals) == (1, False, 2)
    assert out[2].anomalous_now is True
    assert [s.active for s in out] == [False, False, False]  # 1.2 s > ACTIVE_S since the last row
    assert [s.active for s in dd.summarize(rows)] == [True, True, True]  # now = the newest row
    assert dd.default_stream(out) == "s1"  # the most recent one with a measured RTT
    assert dd.default_stream(dd.summarize({"s3": rows["s3"]})) == "s3"
    assert dd.default_stream([]) is None


def test_rule_flags_retransmits_and_rtt_above_twice_the_minimum():
    rows = [
        _row(t=0.1, sid="a", srtt=10.0, rtt_min=10.0),
        _row(t=0.2, sid="a", srtt=19.0),  # < 2x 10 ms
        _row(t=0.3, sid="a", srtt=21.0),  # > 2x and 11 ms above
        _row(t=0.4, sid="a", srtt=10.0, retrans=1),
        _row(t=0.1, sid="lan", srtt=0.05, rtt_min=0.04),
        _row(t=0.2, sid="lan", srtt=0.6),  # 15x the minimum but only 0.56 ms above it: jitter, not congestion
        _row(t=0.3, sid="lan", srtt=1.5),  # 1.46 ms above
        _row(t=0.4, sid="none"),  # nothing known
    ]
    assert dd.rule_flags(rows) == [False, False, True, True, False, False, True, False]


@pytest.fixture
def fresh_detector(monkeypatch):
    monkeypatch.setattr(dd, "_detector_cache", {})


def test_anomalies_fall_back_to_the_rule_without_a_model(monkeypatch, fresh_detector):
    monkeypatch.setitem(sys.modules, "controllers.telemetry_models", None)  # import fails
    rows = [_row(t=0.1, sid="a", srtt=5.0, rtt_min=5.0), _row(t=0.2, sid="a", srtt=5.0, retrans=3)]
    found = dd.detect_anomalies(rows)
    assert found.source == "rule" and found.flags == [False, True]
    assert "no telemetry model" in found.detail and "retransmits > 0" in found.detail
    assert dd.anomaly_flags(rows) == [False, True]


def test_anomalies_come_from_the_model_when_it_loads(monkeypatch, fresh_detector):
    calls: list[int] = []

    class Detector:
        path = Path("/models/anomaly.skops")

        @classmethod
        def load(cls, path=None):  # type: ignore[no-untyped-def]
            return cls()

        def flag_rows(self, rows):  # type: ignore[no-untyped-def]
            calls.append(len(rows))
            return [r["stream_id"] == "b" for r in rows]

    monkeypatch.setitem(sys.modules, "controllers.telemetry_models", types.SimpleNamespace(AnomalyDetector=Detector))
    rows = [_row(t=0.1, sid="a", srtt=5.0, retrans=2), _row(t=0.1, sid="b", srtt=5.0)]
    found = dd.detect_anomalies(rows)
    assert (found.source, found.flags, found.detail) == ("model", [False, True], "telemetry model anomaly.skops")
    assert calls == [2]
    assert dd.detect_anomalies(rows, use_model=False).flags == [True, False]

    def broken(self, rows):  # type: ignore[no-untyped-def]
        raise ValueError("bad vector")

    monkeypatch.setattr(Detector, "flag_rows", broken)
    found = dd.detect_anomalies(rows)
    assert found.source == "rule" and found.flags == [True, False] and "bad vector" in found.detail


def test_model_file_missing_falls_back_and_is_retried_later(monkeypatch, fresh_detector):
    state = {"loads": 0}

    class Detector:
        @classmethod
        def load(cls, path=None):  # type: ignore[no-untyped-def]
            state["loads"] += 1
            raise FileNotFoundError("anomaly.skops: model file not found")

    monkeypatch.setitem(sys.modules, "controllers.telemetry_models", types.SimpleNamespace(AnomalyDetector=Detector))
    assert dd._load_detector(now_s=100.0)[0] is None
    assert dd._load_detector(now_s=100.0 + dd.MODEL_RETRY_S / 2)[0] is None
    assert state["loads"] == 1
    assert "model file not found" in dd._load_detector(now_s=101.0 + dd.MODEL_RETRY_S)[1]
    assert state["loads"] == 2


def test_format_and_clock(tmp_path):
    assert [dd.fmt_ms(x) for x in (None, 0.0421, 3.14159, 22.449, 123.6)] == ["—", "0.042", "3.14", "22.4", "124"]
    assert dd.fmt_num(None) == dd.fmt_num(float("nan")) == "—"
    assert dd.fmt_num(12.34) == "12.3" and dd.fmt_num(12345.0, 0) == "12,345"
    assert dd.run_clock(tmp_path) is None
    (tmp_path / "run.json").write_text('{"live": {"t0_monotonic": %r, "boot_id": "B1"}}' % (time.monotonic() - 7.0))
    clock = dd.run_clock(tmp_path, boot="B1")
    assert clock is not None and 7.0 <= clock() < 60.0
    assert dd.run_clock(tmp_path, boot="another boot") is None


# --------------------------------------------------------------------------- /metrics
def test_server_counters_from_a_real_metrics_page():
    live_import("prometheus_client")
    from prometheus_client import generate_latest

    from live.serve.pacing import LiveMetrics

    m = LiveMetrics()
    m.tokens_generated.inc(120)
    m.tokens_sent.inc(100)
    m.waiting.set(3)
    m.kv_used.set(4096)
    m.streams.labels(outcome="completed").inc(2)
    parsed = dd.parse_prometheus(generate_latest(m.registry).decode())
    assert parsed['tokenpace_streams_total{outcome="completed"}'] == 2.0
    counters = dd.server_counters(parsed)
    assert counters["tokens generated"] == 120 and counters["tokens sent"] == 100
    assert counters["requests waiting"] == 3 and counters["KV in use (tokens)"] == 4096
    assert dd.parse_prometheus("# HELP x\nbad line\nx_total 5 1700000000\ny{a=\"}\"} 2\n\n") == {
        "x_total": 5.0, 'y{a="}"}': 2.0}
    assert dd.metrics_url("http://h:8000") == "http://h:8000/metrics"
    assert dd.metrics_url("http://h:8000/metrics") == "http://h:8000/metrics"


# --------------------------------------------------------------------------- the page (no browser)
def _app(monkeypatch, record: Path):  # type: ignore[no-untyped-def]
    testing = live_import("streamlit.testing.v1")
    monkeypatch.setattr(sys, "argv", [str(APP), "--record", str(record)])
    return testing.AppTest.from_file(str(APP), default_timeout=60).run()


def test_page_empty_state_says_so(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path)
    assert not at.exception
    assert "No telemetry yet" in at.info[0].value and str(tmp_path) in at.info[0].value
    (tmp_path / "ewma").mkdir()
    (tmp_path / "ewma" / "telemetry.csv").write_text(HEADER + _line(0.1, "s1", 5.0)[:9])
    at.run()
    assert not at.exception and "has no rows" in at.info[0].value


def test_page_shows_the_most_recent_connection(monkeypatch, fresh_detector, tmp_path):
    monkeypatch.setitem(sys.modules, "controllers.telemetry_models", None)  # the rule flags
    d = tmp_path / "pid"
    d.mkdir()
    lines = [_line(round(0.1 * k, 1), "s1", 20.0 if k < 6 else 50.0, rtt_min=20.0, p95=25.0 if k < 6 else 55.0)
             for k in range(10)]
    lines += [_line(round(0.1 * k, 1), "s2", 5.0, rtt_min=5.0, retrans=int(k == 6), rate=None) for k in range(5, 9)]
    (d / "telemetry.csv").write_text(HEADER + "".join(lines))
    at = _app(monkeypatch, tmp_path)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["RTT (ms)"] == "50.0" and metrics["p95 RTT (ms)"] == "55.0"  # s1 has the newest row
    assert metrics["anomalous intervals"] == "4 / 10" and metrics["decided rate (tok/s)"] == "20.0"
    assert any("Anomaly flags: **rule**" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert list(table["stream"]) == ["s1", "s2"] and list(table["retransmits"]) == [0, 1]
    at.selectbox[0].select("s2").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["RTT (ms)"] == "5.00" and metrics["decided rate (tok/s)"] == "unpaced"
    assert metrics["retransmits (window)"] == "1"


# --------------------------------------------------------------------------- the command
def test_dashboard_command_rejects_a_missing_recording(tmp_path, capsys):
    from live.cli import main

    missing = tmp_path / "no-such-run"
    assert main(["dashboard", "--record", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --record: ") and str(missing) in err and "no such directory" in err
    assert main(["dashboard", "--record", str(tmp_path), "--metrics-url", "localhost:8000"]) == 2
    from live.dashboard.launch import parser, streamlit_argv

    argv = streamlit_argv(parser().parse_args(["--record", str(tmp_path), "--port", "8600", "--metrics-url", "http://x:1"]))
    assert argv[1:5] == ["-m", "streamlit", "run", str(APP)]
    assert argv[argv.index("--server.port") + 1] == "8600" and argv[argv.index("--server.headless") + 1] == "true"
    assert argv[argv.index("--") + 1:argv.index("--") + 3] == ["--record", str(tmp_path.resolve())]
    assert argv[-2:] == ["--metrics-url", "http://x:1"]


# --------------------------------------------------------------------------- end to end, in Chromium
def _need(what: str, ok: bool) -> None:
    """Skip without ``what`` — or fail under TOKENPACE_REQUIRE_LIVE=1 (scripts/setup_live.sh installs it)."""
    if ok:
        return
    if os.environ.get("TOKENPACE_REQUIRE_LIVE") == "1":
        pytest.fail(f"{what} is missing (TOKENPACE_REQUIRE_LIVE=1; run scripts/test.sh)", pytrace=False)
    pytest.skip(f"{what} is missing")


def _wait_ready(veth, url: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    probe = f"import urllib.request; urllib.request.urlopen('{url}', timeout=2).read()"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if veth.run("a", [PY, "-c", probe], check=False).returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready after {timeout_s} s")


def _settled_rows(path: Path, quiet_s: float = 1.5, timeout_s: float = 20.0) -> list[dd.Row]:
    """telemetry.csv's complete rows once it has stopped growing for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_size = path.stat().st_size
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.2)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    return list(csv.DictReader(lines))


def _expected_rtt(rows: list[dd.Row]) -> tuple[str, str]:
    """The connection the page selects by default and its RTT as the page prints it: the stream with the
    newest row (ties: larger id) among those with a measured srtt, and its latest srtt."""
    last: dict[str, float] = {}
    srtt: dict[str, float] = {}
    for r in rows:
        last[r["stream_id"]] = float(r["t"])
        if r["srtt_ms"]:
            srtt[r["stream_id"]] = float(r["srtt_ms"])
    sid = max(srtt, key=lambda s: (last[s], s))
    return sid, dd.fmt_ms(srtt[sid])


def _metric(page, label: str) -> str | None:  # type: ignore[no-untyped-def]
    for text in page.locator('[data-testid="stMetric"]').all_inner_texts():
        head, _, value = text.strip().partition("\n")
        if head.strip() == label:
            return value.strip()
    return None


@pytest.mark.live
@pytest.mark.timeout(240)
def test_dashboard_shows_live_connection_rtt_in_chromium(veth, tmp_path):  # type: ignore[no-untyped-def]
    _need("streamlit", _importable("streamlit"))
    _need("playwright", _importable("playwright"))
    _need(str(CHROMIUM), CHROMIUM.exists())
    from playwright.sync_api import sync_playwright

    t_start = time.monotonic()
    out = tmp_path / "live"
    out.mkdir()
    addr = veth.addr("a")
    url = f"http://{addr}:8000"
    browser_bin = tmp_path / "chromium-in-netns"  # the browser must live where the page's address is
    browser_bin.write_text(f'#!/bin/sh\nexec nsenter --net=/run/netns/{veth.ns("a")} -- {CHROMIUM} "$@"\n')
    browser_bin.chmod(0o755)
    server = veth.popen("a", [PY, "-m", "live", "--iface", veth.iface("a"), "--host", addr, "--port", "8000",
                              "--controller", "ewma", "--fault", "kind=loss,p=0.03,at_s=2,duration_s=30",
                              "--record", str(out), "--duration", "90"])
    dash = veth.popen("a", [PY, "-m", "live", "dashboard", "--record", str(out), "--metrics-url", url,
                            "--host", "127.0.0.1", "--port", "8501"])
    pw = ctx = None
    shot = tmp_path / "dashboard.png"
    try:
        _wait_ready(veth, "http://127.0.0.1:8501/_stcore/health")
        pw = sync_playwright().start()
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(browser_bin), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1700})
        page = ctx.new_page()
        page.goto("http://127.0.0.1:8501/", wait_until="domcontentloaded", timeout=30_000)
        page.get_by_text("tokenpace — live connections").wait_for(timeout=30_000)
        _wait_ready(veth, f"{url}/healthz")
        t_ready = time.monotonic()
        client = veth.run("b", [PY, "-m", "live", "client", url, "--streams", "6", "--scenario", "steady-broadband",
                                "--time-limit", "8"], timeout_s=60)
        assert client.returncode == 0, client.stderr
        rows = _settled_rows(out / "ewma" / "telemetry.csv")
        assert any(r["srtt_ms"] for r in rows), "no kernel RTT reached the recording"
        sid, rtt = _expected_rtt(rows)
        deadline = time.monotonic() + 20
        shown = None
        while time.monotonic() < deadline:  # the page refreshes itself every second
            shown = _metric(page, "RTT (ms)")
            if shown == rtt and page.get_by_text(f"most recently active ({sid})").count():
                break
            page.wait_for_timeout(300)
        page.wait_for_timeout(500)  # let the charts draw for the screenshot
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}")
        if os.environ.get("TOKENPACE_ARTIFACTS"):
            dest = Path(os.environ["TOKENPACE_ARTIFACTS"])
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, dest / "dashboard.png")
        assert shown == rtt, f"page shows RTT {shown!r} for the selected connection, telemetry.csv says {rtt} ({sid})"
        assert re.fullmatch(r"\d+\.\d+", rtt)
        generated = _metric(page, "tokens generated")
        assert generated is not None and float(generated.replace(",", "")) > 0, generated
        assert "Connections (" in page.inner_text("body")
        print(f"timings: server+page ready {t_ready - t_start:.1f} s, total {time.monotonic() - t_start:.1f} s")
    finally:
        if ctx is not None:
            ctx.close()
        if pw is not None:
            pw.stop()
        veth.stop(dash)
        veth.stop(server)
    assert dash.returncode == 0, (dash.stderr.read() if dash.stderr else "")[-2000:]


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
