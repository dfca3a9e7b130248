"""Load client + live server end to end on loopback: the results folder analysis reads (mode "live")."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.metrics import summarize_run
from analysis.results import load_run, read_csv
from live.kernel.source import FakeTelemetry, SocketStats
from live.loadgen.client import LiveReader, run_load
from live.recorder import merge_live_run
from live.serve.app import running_server
from live.serve.config import LiveConfig
from live.serve.pacing import PacingLoop
from scenarios import Scenario
from sim.model.reader import ABANDONED, COMPLETED

pytestmark = pytest.mark.timeout(60)


def scenario(**over: Any) -> Scenario:
    raw: dict[str, Any] = {
        "name": "live-e2e",
        "seed": 3,
        "control_interval_s": 0.05,
        "server": {"d0_s": 0.005, "d1_s": 1e-5, "batch_tokens": 2048, "kv_tokens": 100_000, "max_running": 64},
        "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 20}, "streams": 12,
                     "prompt_tokens": {"dist": "uniform", "low": 20, "high": 80},
                     "output_tokens": {"dist": "constant", "value": 10}},
        "clients": {"reading_tps": {"dist": "constant", "value": 40},
                    "patience_s": {"dist": "uniform", "low": 0.1, "high": 0.6}, "ttft_expected_s": 0.5},
        "paths": {"lo": {"rate_mbps": 100, "rtt_ms": 1}},
        "controllers": {"fixed": {"rate_tps": 4}},
    }
    raw.update(over)
    return Scenario.model_validate(raw)


class AckEverything(FakeTelemetry):
    """Loopback without eBPF: every byte the server wrote is acked by the next poll, srtt 1 ms."""

    def __init__(self) -> None:
        super().__init__()
        self.pacing: PacingLoop | None = None

    def poll(self) -> dict[int, SocketStats]:
        if self.pacing is not None:
            for cookie, conn in list(self.pacing.conns.items()):
                self.push(SocketStats(cookie=cookie, srtt_us=1000, rtt_min_us=900, rtt_max_us=1100, rtt_p95_us=1050,
                                      retrans=0, cwnd_pkts=10, ssthresh_pkts=None, snd_wnd_bytes=65535,
                                      inflight_bytes=0, acked_bytes=conn.written - conn.acked, samples=1))
        return super().poll()


def test_reader_on_asyncio_follows_the_simulators_rules() -> None:
    """The reader model on the asyncio clock: display no earlier than arrival and 1/r after the previous."""
    async def main() -> tuple[LiveReader, LiveReader]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        def now() -> float:
            return loop.time() - t0

        ends: list[LiveReader] = []
        reader = LiveReader(loop, now, 0.0, 4, 10.0, 2.0, 1.0, ends.append)
        for _k, at in enumerate((0.05, 0.10, 0.40)):  # third arrives late: a stall of ~0.15 s
            await asyncio.sleep(max(0.0, at - now()))
            reader.on_tokens(reader.received + 1)
        await asyncio.sleep(0.35)
        quitter = LiveReader(loop, now, now(), 3, 10.0, 0.2, 0.2, ends.append)
        await asyncio.sleep(0.3)  # nothing arrives: it leaves after its first-token patience
        reader.on_tokens(4)
        return reader, quitter

    reader, quitter = asyncio.run(main())
    d = reader.t_displayed
    assert reader.state == COMPLETED
    assert d[1] == pytest.approx(max(reader.t_received[1], d[0] + 0.1))
    assert d[2] == pytest.approx(reader.t_received[2]) and reader.stall_s == pytest.approx(
        reader.t_received[2] - (d[1] + 0.1) + max(0.0, reader.t_received[3] - (d[2] + 0.1)), abs=1e-9)
    assert quitter.state == ABANDONED and quitter.end_s - quitter.arrival_s == pytest.approx(0.2, abs=0.05)


def test_load_client_and_server_write_a_live_results_folder(tmp_path: Path) -> None:
    scn = scenario()
    tel = AckEverything()

    async def main() -> Any:
        cfg = LiveConfig.from_scenario(scn, "fixed", port=0, record_dir=tmp_path)
        async with running_server(cfg, tel) as srv:
            tel.pacing = srv.state.pacing
            result = await run_load(srv.url, streams=12, scenario=scn, out_dir=tmp_path, time_limit_s=20)
            await asyncio.sleep(0.2)  # the last ACK polls
        return result

    result = asyncio.run(asyncio.wait_for(main(), 40))
    assert result.errors == 0 and len(result.streams) == 12
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["mode"] == "live" and info["controllers"] == ["fixed"] and info["scenario"]["name"] == "live-e2e"
    assert info["live"]["t0_monotonic"] > 0 and info["controller_params"]["fixed"] == {"rate_tps": 4}

    summary = summarize_run(tmp_path)
    m = summary["controllers"]["fixed"]
    assert summary["scenario"] == "live-e2e" and m["streams"] == 12
    assert m["completed"] > 0 and m["abandoned"] > 0 and m["completed"] + m["abandoned"] == 12
    assert m["tokens_generated"] >= m["tokens_displayed"] > 0
    assert m["mean_rate_tps"] == pytest.approx(4) and 0 < m["gpu_busy_frac"] < 1
    assert m["ttft_p50_s"] < 0.2

    run = load_run(tmp_path)
    c = run.controllers["fixed"]
    tok, streams = c.tokens, c.streams
    shown = ~np.isnan(tok["t_displayed"])
    # every displayed token carries all five times, on one clock, in causal order
    for col in ("t_generated", "t_sent", "t_acked", "t_received"):
        assert not np.isnan(tok[col][shown]).any(), col
    assert np.all(tok["t_sent"][shown] >= tok["t_generated"][shown] - 1e-6)
    assert np.all(tok["t_received"][shown] >= tok["t_sent"][shown] - 2e-3)
    assert np.all(tok["t_displayed"][shown] >= tok["t_received"][shown] - 1e-6)
    # the client's outcome, the server's generated count, waste = generated - displayed
    for i in range(len(streams)):
        gen, disp = streams["generated_tokens"][i], streams["displayed_tokens"][i]
        assert streams["wasted_tokens"][i] == gen - disp
        if streams["outcome"][i] == "abandoned":
            assert gen - disp <= 2  # the pacer had at most the step in flight and one more
        else:
            assert gen == disp == 10
    tel_rows = c.telemetry
    assert tel_rows is not None and len(tel_rows) > 0 and np.all(tel_rows["rate_tps"] == 4)
    assert np.nanmax(tel_rows["acked_tokens"]) > 0 and np.nanmax(tel_rows["srtt_ms"]) == pytest.approx(1.0)
    assert c.server is not None and len(c.server) > 0 and c.events is not None
    assert (tmp_path / "fixed" / "request_traces.csv").is_file()
    # merging again changes nothing
    before = (tmp_path / "fixed" / "tokens.csv").read_bytes()
    assert merge_live_run(tmp_path) == ["fixed"]
    assert (tmp_path / "fixed" / "tokens.csv").read_bytes() == before


def test_load_is_bounded_in_time_and_cut_streams_are_cancelled(tmp_path: Path) -> None:
    scn = scenario(workload={"arrivals": {"kind": "periodic", "rate_per_s": 50}, "streams": 4,
                             "output_tokens": {"dist": "constant", "value": 500}},
                   clients={"reading_tps": {"dist": "constant", "value": 1}, "patience_s": 30, "ttft_expected_s": 0.5})

    async def main() -> Any:
        cfg = LiveConfig.from_scenario(scn, "fixed", port=0, record_dir=tmp_path)
        async with running_server(cfg) as srv:
            return await run_load(srv.url, scenario=scn, out_dir=tmp_path, time_limit_s=0.6)

    result = asyncio.run(asyncio.wait_for(main(), 20))
    assert result.wall_s < 3 and {s.outcome for s in result.streams} == {"cancelled"}
    streams = read_csv(tmp_path / "fixed" / "streams.csv")
    assert list(streams["outcome"]) == ["cancelled"] * 4
    # unpaced until the first control tick (<= 50 ms at ~200 steps/s, as in the simulator), then 4 tok/s
    assert all(1 <= g <= 10 + 0.6 * 4 + 2 for g in streams["generated_tokens"])
    m = summarize_run(tmp_path, write=False)["controllers"]["fixed"]
    assert m["cancelled"] == 4 and not math.isnan(m["qoe_mean"])
