"""The live dashboard page (a Streamlit script): what each connection of a running server sees and decides.

Started by ``python -m live dashboard --record DIR [--metrics-url URL]`` (:mod:`live.dashboard.launch`), which
runs ``streamlit run`` on this file with the arguments after ``--``. The page tails
``DIR/<controller>/telemetry.csv`` (:mod:`live.dashboard.data`) and shows, refreshed every second by a
Streamlit fragment (only this part of the page reruns):

* where the data comes from and which anomaly source flags it (the telemetry model, or the rule);
* the server's counters from its Prometheus ``/metrics`` when a URL was given;
* a table of connections: RTT, retransmits, decided rate, estimated client buffer, anomalies;
* for the selected connection (default: the most recently active one with a measured RTT), its
  latest values and charts over time — srtt and p95 RTT, retransmits per interval, the decided
  rate, the client buffer estimate — with anomalous intervals marked by red rules.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from live.dashboard import data as dd

AUTO = "__auto__"  # the selector's "follow the most recently active connection"
ANOMALY_COLOR = "#d62728"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="live/dashboard/app.py")
    p.add_argument("--record", type=Path, required=True)
    p.add_argument("--metrics-url")
    p.add_argument("--window", type=float, default=dd.WINDOW_S)
    p.add_argument("--refresh", type=float, default=1.0)
    args, _unknown = p.parse_known_args(argv)
    return args


def _stretch(fn: Any) -> dict[str, Any]:
    """Full width on any Streamlit >= 1.37: older versions default to ``use_container_width=False``,
    newer ones stretch by default and deprecate that argument."""
    param = inspect.signature(fn).parameters.get("use_container_width")
    return {"use_container_width": True} if param is not None and param.default is False else {}


def _tail(ctrl_dir: Path, window_s: float) -> dd.TelemetryTail:
    """This browser session's reader of ctrl_dir's telemetry.csv (a new one when the folder changed)."""
    path = ctrl_dir / dd.TELEMETRY_FILE
    tail = st.session_state.get("tail")
    if not isinstance(tail, dd.TelemetryTail) or tail.path != path:
        tail = dd.TelemetryTail(path, window_s=window_s)
        st.session_state["tail"] = tail
        st.session_state.pop("chosen_stream", None)
    return tail


def _server_counters(url: str) -> None:
    try:
        counters = dd.server_counters(dd.fetch_metrics(url))
    except (OSError, ValueError) as exc:
        st.warning(f"Server counters: {dd.metrics_url(url)} not reachable ({exc}).")
        return
    if not counters:
        st.caption(f"Server counters: {dd.metrics_url(url)} exported none of the tokenpace counters.")
        return
    st.subheader("Server")
    cols = st.columns(len(counters))
    for col, (label, value) in zip(cols, counters.items(), strict=True):
        col.metric(label, dd.fmt_num(value, 0 if float(value).is_integer() else 1))


def _table(summaries: list[dd.ConnectionSummary]) -> pd.DataFrame:
    return pd.DataFrame([{
        "stream": s.stream_id,
        "state": "active" if s.active else "ended",
        "RTT (ms)": s.srtt_ms,
        "p95 RTT (ms)": s.rtt_p95_ms,
        "retransmits": s.retrans_window,
        "rate (tok/s)": s.rate_tps,
        "client buffer (tok)": s.client_buffer_est,
        "anomaly": ("⚠ now, " if s.anomalous_now else "") + f"{s.anomalies} of {s.intervals}",
    } for s in summaries])


def _frame(rows: list[dd.Row], flags: list[bool]) -> pd.DataFrame:
    cols = ("t", "srtt_ms", "rtt_p95_ms", "retrans", "rate_tps", "client_buffer_est")
    df = pd.DataFrame({c: [dd.to_float(r.get(c)) for r in rows] for c in cols})
    df["anomaly"] = flags
    return df


def _chart(df: pd.DataFrame, series: dict[str, str], title: str, y_title: str, *, bars: bool = False) -> alt.Chart:
    """Lines (or bars) of ``series`` over t, with a red rule at each anomalous interval."""
    long = df.melt(id_vars=["t"], value_vars=list(series), var_name="series", value_name="value").dropna()
    long["series"] = long["series"].map(series)
    x = alt.X("t:Q", title="t (s, server clock)", scale=alt.Scale(domain=[df["t"].min(), df["t"].max()], nice=False))
    y_axis = alt.Axis(format="d", tickMinStep=1) if bars else alt.Axis()
    y = alt.Y("value:Q", title=y_title, axis=y_axis)
    base = alt.Chart(long)
    mark = base.mark_bar(width=2) if bars else base.mark_line(point=len(df) < 30)
    lines = mark.encode(x=x, y=y, color=alt.Color("series:N", title=None, legend=alt.Legend(orient="top")),
                        tooltip=["t:Q", "series:N", alt.Tooltip("value:Q", format=".3f")])
    flagged = df.loc[df["anomaly"], ["t"]]
    rules = alt.Chart(flagged).mark_rule(color=ANOMALY_COLOR, opacity=0.3, strokeWidth=2).encode(x=x)
    return alt.layer(rules, lines).properties(title=title, height=320)


def _connection(summary: dd.ConnectionSummary, rows: list[dd.Row], flags: list[bool], now_t: float) -> None:
    ago = now_t - summary.last_t
    state = "active" if summary.active else f"ended (last row {ago:.1f} s ago)"
    st.caption(f"Connection {summary.stream_id}: {state} · {summary.intervals} control intervals in the window · "
               f"tokens generated {dd.fmt_num(summary.generated_tokens, 0)}, "
               f"acked {dd.fmt_num(summary.acked_tokens, 0)}")
    c = st.columns(6)
    c[0].metric("RTT (ms)", dd.fmt_ms(summary.srtt_ms))
    c[1].metric("p95 RTT (ms)", dd.fmt_ms(summary.rtt_p95_ms))
    c[2].metric("retransmits (window)", str(summary.retrans_window))
    c[3].metric("decided rate (tok/s)", "unpaced" if summary.rate_tps is None else dd.fmt_num(summary.rate_tps))
    c[4].metric("client buffer (tok)", dd.fmt_num(summary.client_buffer_est))
    c[5].metric("anomalous intervals", f"{summary.anomalies} / {summary.intervals}")
    df = _frame(rows, flags)
    kw = _stretch(st.altair_chart)
    left, right = st.columns(2)
    with left:
        st.altair_chart(_chart(df, {"srtt_ms": "srtt", "rtt_p95_ms": "p95 RTT"}, "RTT", "ms"), **kw)
        if df["rate_tps"].notna().any():
            st.altair_chart(_chart(df, {"rate_tps": "decided rate"}, "Decided rate", "tokens/s"), **kw)
        else:
            st.info("Decided rate: none — the controller left this stream unpaced.")
    with right:
        st.altair_chart(_chart(df, {"retrans": "retransmits"}, "Retransmits per interval", "segments", bars=True),
                        **kw)
        st.altair_chart(_chart(df, {"client_buffer_est": "client buffer"}, "Estimated client buffer", "tokens"),
                        **kw)
    st.caption("Red rules mark anomalous control intervals.")


def _select(summaries: list[dd.ConnectionSummary]) -> str:
    """The connection selector; follows the most recently active connection until the user picks one."""
    ids = sorted(s.stream_id for s in summaries)  # stable order: the options change only when streams do
    auto = dd.default_stream(summaries) or ids[0]
    chosen = st.session_state.get("chosen_stream")
    if chosen not in ids:
        chosen = None
    options = [AUTO, *ids]
    idx = 0 if chosen is None else options.index(chosen)
    pick = st.selectbox("Connection", options, index=idx,
                        format_func=lambda o: f"most recently active ({auto})" if o == AUTO else o)
    if pick != options[idx]:  # the user changed it
        st.session_state["chosen_stream"] = None if pick == AUTO else pick
    return auto if pick in (AUTO, None) else str(pick)


def _anomalies(tail: dd.TelemetryTail) -> dd.AnomalyResult:
    """Flags for the window's rows, recomputed only when rows were added (the model is not free)."""
    key = (str(tail.path), tail.offset, tail.rows_read)
    cached = st.session_state.get("anomalies")
    if cached is not None and cached[0] == key:
        return cached[1]  # type: ignore[no-any-return]
    found = dd.detect_anomalies(tail.window_rows())
    st.session_state["anomalies"] = (key, found)
    return found


def live_view(args: argparse.Namespace) -> None:
    record: Path = args.record
    if args.metrics_url:
        _server_counters(args.metrics_url)
    ctrl_dir = dd.find_controller_dir(record)
    if ctrl_dir is None:
        st.info(f"No telemetry yet: waiting for `python -m live --record {record}` to write "
                f"`{record}/<controller>/{dd.TELEMETRY_FILE}`.")
        return
    tail = _tail(ctrl_dir, args.window)
    tail.poll()
    if not tail.rows:
        st.info(f"No telemetry yet: `{tail.path}` has no rows — no stream has been through a control interval.")
        return
    clock = dd.run_clock(ctrl_dir.parent) or dd.run_clock(ctrl_dir)
    latest = tail.latest_t or 0.0
    now_t = max(clock(), latest) if clock is not None else latest
    found = _anomalies(tail)
    per_stream: dict[str, list[bool]] = {}
    i = 0
    for sid, q in tail.rows.items():
        per_stream[sid] = found.flags[i:i + len(q)]
        i += len(q)
    summaries = dd.summarize(tail.rows, now_t, flags=per_stream)
    st.caption(f"Source: `{tail.path}` · controller **{ctrl_dir.name}** · {tail.rows_read} rows read · "
               f"newest row t = {latest:.1f} s ({max(0.0, now_t - latest):.1f} s ago) · "
               f"window {args.window:g} s")
    st.caption(f"Anomaly flags: **{found.source}** — {found.detail}")
    active = sum(s.active for s in summaries)
    st.subheader(f"Connections ({active} active, {len(summaries)} in the window)")
    rtt_col = st.column_config.NumberColumn(format="%.3g")
    one_digit = st.column_config.NumberColumn(format="%.1f")
    st.dataframe(_table(summaries), hide_index=True, height=min(38 + 35 * len(summaries), 320),
                 column_config={"RTT (ms)": rtt_col, "p95 RTT (ms)": rtt_col, "rate (tok/s)": one_digit,
                                "client buffer (tok)": one_digit}, **_stretch(st.dataframe))
    sid = _select(summaries)
    by_id = {s.stream_id: s for s in summaries}
    _connection(by_id[sid], list(tail.rows[sid]), per_stream[sid], now_t)


def main() -> None:
    st.set_page_config(page_title="tokenpace live", layout="wide")
    st.title("tokenpace — live connections")
    try:
        args = parse_args(sys.argv[1:])
    except SystemExit:
        st.error("Start the dashboard with `python -m live dashboard --record DIR`.")
        st.stop()
        return
    st.caption(f"Recording `{args.record}` · refreshed every {args.refresh:g} s")

    @st.fragment(run_every=args.refresh)
    def _live() -> None:
        live_view(args)

    _live()


main()
