"""``python -m live`` (server, client, lab, doctor, cleanup, dashboard) answers any command line with
exit 0 or 2 and plain lines: never a traceback, never exit 1.

The fuzzed command lines go through ``main(argv, start=...)`` with a ``start`` that records the
validated plan instead of starting it, so a random argv that happens to be valid returns 0 at once:
nothing here serves, shapes a qdisc, creates a namespace or runs a lab. The explicit cases check
the exact line that names the bad flag (or file and key); a few go through the real ``python -m
live`` and the real start, up to the point where it refuses (a missing privilege, a port taken,
no server at the URL) -- also without creating anything.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_fuzz import Ended, argv_token, call_main, file_bytes, run_module, yaml_scalars, yaml_values
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import live.kernel.doctor
from live.cli import Plan, main
from scenarios.cli_errors import run_cli

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BUILTIN = "steady-broadband"
BUILTIN_DATA: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parents[1] / "scenarios" /
                                               f"{BUILTIN}.yaml").read_text())


# --------------------------------------------------------------------------- plumbing
class Recorder:
    """The injected ``start``: keeps the validated plan, starts nothing."""

    def __init__(self) -> None:
        self.plans: list[Plan] = []

    def __call__(self, plan: Plan) -> int:
        self.plans.append(plan)
        return 0


def validate_only(argv: list[str]) -> tuple[Ended, list[Plan]]:
    rec = Recorder()
    ended = call_main(lambda a: main(a, start=rec), argv)
    return ended, rec.plans


def checked(argv: list[str], command: str) -> Ended:
    """No traceback, exit 0 or 2; exit 0 means a plan of ``command`` was validated (or --help was
    printed), exit 2 that nothing was started and every stderr line is a plain message."""
    ended, plans = validate_only(argv)
    ended.check(allowed=(0, 2))
    event(f"exit {ended.code}" + (" (a plan)" if plans else ""))
    if ended.code == 0:
        assert [p.command for p in plans] == [command] or (not plans and "usage:" in ended.out), (argv, ended)
    else:
        assert not plans, (argv, plans)
        assert ended.err.startswith(("error: ", "usage: ")), ended.err  # ours, or argparse's usage line
    return ended


def errors(ended: Ended) -> list[str]:
    return [line for line in ended.err.split("\n") if line.startswith("error: ")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths the fuzzer picks from: a folder, a non-empty folder, a file, a scenario file it rewrites."""
    root = tmp_path_factory.mktemp("live-cli-fuzz")
    full = root / "full"
    full.mkdir()
    (full / "x").write_text("x")
    (root / "afile").write_text("not a folder")
    (root / "empty").mkdir()
    return {"root": root, "full": full, "file": root / "afile", "empty": root / "empty",
            "new": root / "new" / "deeper", "scenario": root / "scenario.yaml"}


# --------------------------------------------------------------------------- strategies
def numbers(ints: bool) -> st.SearchStrategy[str]:
    """A flag's value: in range, out of range, huge, nan/inf, not a number."""
    base = st.integers(min_value=-(10**20), max_value=10**20) if ints else st.floats(allow_nan=True,
                                                                                     allow_infinity=True)
    return st.one_of(base.map(str), st.integers(-3, 70000).map(str),
                     st.sampled_from(["0", "-1", "1", "65535", "65536", "nan", "inf", "-inf", "1e309", "x", ""]))


paths_choice = st.sampled_from(["root", "full", "file", "empty", "new", "/nonexistent/x", "/dev/null", "/", ""])
urls = st.one_of(st.sampled_from(["http://127.0.0.1:8000", "https://h", "http://x", "ftp://x", "localhost:8000",
                                  "http://", "http://h:99999", "http://h:0", "http://[::1]:80/v1", "", "/x",
                                  "http://h:abc"]),
                 st.text(max_size=15))
controller_names = st.sampled_from(["unpaced", "fixed", "pid", "oracle", "nosuch", "", "unpaced,pid",
                                    "oracle,nosuch,x", ",,"])
ifaces = st.one_of(st.sampled_from(["lo", "nosuchif0", "eth9", "", "../..", ".", "a" * 20, "lo/x"]),
                   st.text(max_size=16))
hosts = st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "localhost", "", "10.9.9.9", "999.1.1.1", "not a host",
                         "[::1]"])
fault_specs = st.lists(
    st.tuples(st.sampled_from(["kind", "p", "at_s", "duration_s", "delay_ms", "jitter_ms", "rate_mbps", "factor",
                               "path", "p_gb", "p_bg", "zz", ""]),
              st.sampled_from(["loss", "delay", "outage", "rate", "gilbert_elliott", "nosuch", "0", "1", "-1",
                               "0.5", "1e309", "nan", "inf", "x", ""])),
    max_size=6).map(lambda kv: ",".join(f"{k}={v}" for k, v in kv))
fault_specs = st.one_of(fault_specs, st.sampled_from(["kind=loss,p=0.05,at_s=10,duration_s=20", "loss", "",
                                                      "kind=outage,at_s=1,duration_s=inf"]))


def _mutated(overrides: dict[str, Any], nested: list[tuple[str, str, Any]]) -> bytes:
    data = {**BUILTIN_DATA, **overrides}
    for outer, inner, value in nested:
        if isinstance(data.get(outer), dict):
            data[outer] = {**data[outer], inner: value}
    return yaml.safe_dump(data, allow_unicode=True).encode("utf-8")


wild_numbers = st.one_of(st.integers(min_value=-(10**40), max_value=10**40),
                         st.floats(allow_nan=True, allow_infinity=True), yaml_scalars)
scenario_contents = st.one_of(
    file_bytes,
    yaml_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True).encode("utf-8")),
    st.builds(_mutated,
              st.dictionaries(st.sampled_from([*BUILTIN_DATA, "not_a_key", "duration_s"]), yaml_values, max_size=3),
              st.lists(st.tuples(st.sampled_from(["workload", "clients", "server", "slo", "paths"]),
                                 st.sampled_from(["streams", "rate_per_s", "kv_tokens", "qoe", "broadband",
                                                  "ttft_expected_s", "nope"]),
                                 wild_numbers), max_size=3)),
    st.just(yaml.safe_dump(BUILTIN_DATA).encode()),  # valid: the plan is recorded
)
scenario_ref = st.sampled_from(["FILE", "FILE", "FILE", BUILTIN, "flash-outage", "nosuch.yaml", "/dev/null", ""])


def flags(table: dict[str, st.SearchStrategy[str] | None]) -> st.SearchStrategy[list[str]]:
    """Flags of one subcommand (``None``: a switch) with random values, plus random tokens."""
    one = st.sampled_from(sorted(table)).flatmap(
        lambda f: st.just([f]) if table[f] is None else table[f].map(lambda v: [f, v]))  # type: ignore[union-attr]
    return st.tuples(st.lists(one, max_size=6), st.lists(argv_token, max_size=2),
                     st.booleans()).map(lambda t: [x for pair in t[0] for x in pair] + (t[1] if t[2] else []))


def resolve(argv: list[str], area: dict[str, Path]) -> list[str]:
    """Placeholders to this run's paths (drawn by name, so hypothesis can shrink them)."""
    names = {"root", "full", "file", "empty", "new"}
    return [str(area[a]) if a in names else str(area["scenario"]) if a == "FILE" else a for a in argv]


def write_scenario(area: dict[str, Path], content: bytes) -> None:
    area["scenario"].write_bytes(content)


# --------------------------------------------------------------------------- the fuzz tests
SERVE = {"--iface": ifaces, "--host": hosts, "--port": numbers(True), "--controller": controller_names,
         "--scenario": scenario_ref, "--fault": fault_specs, "--path": st.sampled_from(["broadband", "x", ""]),
         "--record": paths_choice, "--duration": numbers(False), "--upstream": urls, "--no-telemetry": None,
         "--no-faults": None}


@FUZZ
@given(argv=flags(SERVE), content=scenario_contents, iface=st.sampled_from(["lo", "nosuchif0", None]))
def test_server_any_argv(area, argv, content, iface):  # type: ignore[no-untyped-def]
    write_scenario(area, content)
    full = resolve(argv, area) + (["--iface", iface] if iface else [])
    checked(full, "serve")
    assert not area["new"].exists()  # validation creates nothing


CLIENT = {"--streams": numbers(True), "--scenario": scenario_ref, "--out": paths_choice, "--seed": numbers(True),
          "--time-limit": numbers(False), "--endpoint": st.sampled_from(["chat", "completions", "x"]),
          "--sync-stdin": None, "--bind": st.sampled_from(["broadband=127.0.0.1", "broadband=10.9.9.9", "x=127.0.0.1",
                                                           "broadband=", "=1.2.3.4", "nope", "broadband=::1"])}


@FUZZ
@given(url=urls, argv=flags(CLIENT), content=scenario_contents)
def test_client_any_argv(area, url, argv, content):  # type: ignore[no-untyped-def]
    write_scenario(area, content)
    checked(["client", url, *resolve(argv, area)], "client")
    assert not area["new"].exists()


LAB = {"--out": paths_choice, "--controllers": controller_names, "--path": st.sampled_from(["broadband", "x"]),
       "--streams": numbers(True), "--time-limit": numbers(False), "--seed": numbers(True), "--port": numbers(True),
       "--link": st.sampled_from(["tun", "qdisc", "veth"])}


@FUZZ
@given(scenario=scenario_ref, out=paths_choice, argv=flags(LAB), content=scenario_contents)
def test_lab_any_argv(area, scenario, out, argv, content):  # type: ignore[no-untyped-def]
    write_scenario(area, content)
    checked(["lab", *resolve([scenario, "--out", out, *argv], area)], "lab")
    assert not area["new"].exists()


DASHBOARD = {"--record": paths_choice, "--metrics-url": urls, "--port": numbers(True), "--host": hosts,
             "--window": numbers(False), "--refresh": numbers(False)}


@FUZZ
@given(argv=flags(DASHBOARD))
def test_dashboard_any_argv(area, argv):  # type: ignore[no-untyped-def]
    checked(["dashboard", *resolve(argv, area)], "dashboard")


@FUZZ
@given(argv=flags({"--iface": ifaces, "--netns": st.one_of(st.sampled_from(["", "nope", "..", "a/b"]),
                                                           st.text(max_size=8))}))
def test_cleanup_any_argv(argv):  # type: ignore[no-untyped-def]
    checked(["cleanup", *argv], "cleanup")


@FUZZ
@given(argv=flags({"--no-compile": None}))
def test_doctor_any_argv(argv):  # type: ignore[no-untyped-def]
    checked(["doctor", *argv], "doctor")


@FUZZ
@given(head=st.sampled_from(["", "client", "lab", "dashboard", "cleanup", "doctor"]), argv=st.lists(argv_token,
                                                                                                   max_size=6))
def test_any_tokens_after_any_command(head, argv):  # type: ignore[no-untyped-def]
    checked(([head] if head else []) + argv, head or "serve")


# --------------------------------------------------------------------------- explicit bad input
def test_each_bad_flag_is_named_on_its_own_line(area):  # type: ignore[no-untyped-def]
    cases: list[tuple[list[str], list[str]]] = [
        (["--iface", "lo", "--port", "70000"], ["error: --port: 70000 is not a TCP port (1-65535)"]),
        (["--iface", "nosuchif0"], ["error: --iface: no such interface 'nosuchif0' (here: "]),
        (["--iface", "lo", "--duration", "-1"], ["error: --duration: must be a positive number of seconds, got -1.0"]),
        (["--iface", "lo", "--duration", "nan"], ["error: --duration: must be a positive number of seconds, got nan"]),
        (["--iface", "lo", "--controller", "nosuch"],
         ["error: --controller: unknown controller 'nosuch'; known: aimd,"]),
        (["--iface", "lo", "--controller", "oracle"], ["error: --controller: 'oracle' needs knowledge only the "
                                                       "simulator has (sim only)"]),
        (["--iface", "lo", "--upstream", "ftp://x"], ["error: --upstream: 'ftp://x': expected http://HOST"]),
        (["--iface", "lo", "--record", str(area["file"])],
         [f"error: --record: {area['file']} is a file, not a folder"]),
        (["--iface", "lo", "--record", f"{area['file']}/sub"],
         [f"error: --record: {area['file']}/sub: {area['file']} is a file, so no folder can be made under it"]),
        (["--iface", "lo", "--host", "10.9.9.9"], ["error: --host: 10.9.9.9 is not an address of this machine"]),
        (["--iface", "lo", "--path", "x"], ["error: --path: needs --scenario"]),
        (["client", "http://x", "--streams", "0"], ["error: --streams: must be at least 1, got 0"]),
        (["client", "localhost:8000", "--seed", "-1"], ["error: URL: 'localhost:8000': expected http://HOST",
                                                        "error: --seed: must be at least 0, got -1"]),
        (["client", "http://x", "--bind", "broadband=10.9.9.9", "--bind", "wifi=127.0.0.1", "--bind", "nope"],
         ["error: --bind: 10.9.9.9 is not an address of this machine",
          "error: --bind: 'wifi=127.0.0.1': 'wifi' is not one of the scenario's paths (broadband)",
          "error: --bind: 'nope': expected PATH=ADDR"]),
        (["client", "http://x", "--time-limit", "inf"], ["error: --time-limit: must be a positive number of seconds"]),
        (["lab", "nosuch.yaml", "--out", str(area["new"])], ["error: nosuch.yaml: no such file, and not a built-in "
                                                             "scenario (bursty-loss, "]),
        (["lab", BUILTIN, "--out", str(area["file"])], [f"error: --out: {area['file']} is a file, not a folder"]),
        (["lab", BUILTIN, "--out", str(area["full"])], [f"error: --out: {area['full']} exists and is not empty"]),
        (["lab", BUILTIN, "--out", str(area["new"]), "--controllers", "oracle,nosuch"],
         ["error: --controllers: unknown controller 'nosuch'; known: "]),
        (["lab", BUILTIN, "--out", str(area["new"]), "--controllers", "oracle"],
         ["error: --controllers: no controller that can run live (oracle: sim only)"]),
        (["lab", BUILTIN, "--out", str(area["new"]), "--port", "65535", "--controllers", "unpaced,pid"],
         ["error: --port: 65535 + 1 (one port per controller) is beyond 65535"]),
        (["dashboard", "--record", "/nonexistent"], ["error: --record: /nonexistent: no such directory"]),
        (["dashboard", "--record", str(area["file"]), "--window", "nan", "--refresh", "0.1"],
         [f"error: --record: {area['file']}: not a directory", "error: --window: must be a positive number",
          "error: --refresh: at least 0.2 s, got 0.1"]),
        (["cleanup", "--iface", "nosuchif0"], ["error: --iface: no such interface 'nosuchif0'"]),
        (["cleanup", "--iface", "lo", "--netns", "nosuchns0"],
         ["error: --netns: no such network namespace 'nosuchns0'"]),
    ]
    for argv, want in cases:
        ended, plans = validate_only(argv)
        ended.check(allowed=(2,))
        got = errors(ended)
        assert not plans and len(got) == len(want), (argv, got)
        for line, prefix in zip(got, want, strict=True):
            assert line.startswith(prefix), (argv, line, prefix)


def test_every_problem_of_one_command_line_is_listed(area):  # type: ignore[no-untyped-def]
    ended, _ = validate_only(["--iface", "eth9", "--port", "0", "--duration", "inf", "--controller", "nosuch",
                              "--fault", "kind=loss,p=7", "--record", "/dev/null", "--upstream", "x"])
    got = [line.split(":")[1].strip() for line in errors(ended.check(allowed=(2,)))]
    assert got == ["--iface", "--port", "--duration", "--controller", "--fault 'kind=loss,p=7'",
                   "--fault 'kind=loss,p=7'", "--fault 'kind=loss,p=7'", "--record", "--upstream"]
    assert "error: --fault 'kind=loss,p=7': p: Input should be less than or equal to 1" in ended.err


def test_a_port_in_use_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        ended, _ = validate_only(["--iface", "lo", "--port", str(port)])
        dash, _ = validate_only(["dashboard", "--record", ".", "--port", str(port)])
    assert errors(ended.check(allowed=(2,))) == [f"error: --port: {port} is in use on 127.0.0.1"]
    assert errors(dash.check(allowed=(2,))) == [f"error: --port: {port} is in use on 127.0.0.1"]


def test_scenario_files_that_are_not_utf8_or_have_several_problems(area):  # type: ignore[no-untyped-def]
    bad = area["root"] / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    for argv in (["--iface", "lo", "--scenario", str(bad)], ["lab", str(bad), "--out", str(area["new"])],
                 ["client", "http://x", "--scenario", str(bad)]):
        ended, _ = validate_only(argv)
        assert errors(ended.check(allowed=(2,))) == [f"error: {bad}: not UTF-8 text (byte 0xe9 at offset 9)"], argv
    several = area["root"] / "several.yaml"
    several.write_bytes(b"name: bad\nduration_s: -5\nnot_a_key: 1\n")
    ended, _ = validate_only(["lab", str(several), "--out", str(area["new"])])
    got = errors(ended.check(allowed=(2,)))
    assert len(got) >= 3 and all(line.startswith(f"error: {several}: ") for line in got), got
    assert f"error: {several}: not_a_key: unknown key" in got


# --------------------------------------------------------------------------- valid plans: what start() gets
def test_valid_command_lines_validate_to_the_plan_they_describe(area):  # type: ignore[no-untyped-def]
    port = free_port()
    ended, plans = validate_only(["--iface", "lo", "--port", str(port), "--scenario", "flash-outage",
                                  "--controller", "pid", "--record", str(area["new"]), "--duration", "2.5"])
    ended.check(allowed=(0,))
    cfg = plans[0].config
    from scenarios import load_scenario

    scn = load_scenario("flash-outage").scenario
    first = next(iter(scn.paths))
    assert (cfg.config.port, cfg.config.controller, cfg.config.duration_s) == (port, "pid", 2.5)
    assert cfg.faults == list(scn.faults_for(first)) and cfg.base == scn.paths[first] and cfg.telemetry
    assert not area["new"].exists()

    _, plans = validate_only(["--iface", "lo", "--port", str(port), "--no-telemetry",
                              "--fault", "kind=loss,p=0.05,at_s=10,duration_s=20"])
    assert plans[0].config.faults == [{"kind": "loss", "p": 0.05, "at_s": 10.0, "duration_s": 20.0, "path": None}]
    assert plans[0].config.base is None and not plans[0].config.telemetry

    _, plans = validate_only(["client", "http://127.0.0.1:1/v1", "--streams", "3", "--seed", "0",
                              "--bind", "broadband=127.0.0.1"])
    assert (plans[0].config.streams, plans[0].config.seed, plans[0].config.bind) == (3, 0, {"broadband": "127.0.0.1"})

    _, plans = validate_only(["lab", BUILTIN, "--out", str(area["empty"])])
    lab = plans[0].config
    assert lab.skipped == ["oracle"] and "oracle" not in lab.names and lab.names[0] == "unpaced"
    assert lab.out == area["empty"].resolve() and not list(area["empty"].iterdir())

    _, plans = validate_only(["doctor", "--no-compile"])
    assert plans[0].command == "doctor" and plans[0].config == ["--no-compile"]


# --------------------------------------------------------------------------- the real start, up to its refusal
def _lacking(name: str):  # type: ignore[no-untyped-def]
    return lambda: live.kernel.doctor.Check(name, "FAIL", f"{name} missing in this test", "the fix")


def test_missing_privileges_or_bcc_refuse_before_anything_starts(monkeypatch, area):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(live.kernel.doctor, "check_privileges", _lacking("privileges"))
    port = free_port()
    for argv, want in (
        (["--iface", "lo", "--port", str(port)], "error: needs root privileges (privileges missing in this test): "
                                                 "run as root or with sudo"),
        (["lab", BUILTIN, "--out", str(area["new"])], "error: the lab needs root privileges"),
        (["cleanup", "--iface", "lo"], "error: needs root privileges"),
    ):
        ended = call_main(main, argv).check(allowed=(2,))
        assert errors(ended)[0].startswith(want), (argv, ended.err)
        assert not area["new"].exists()
    monkeypatch.undo()
    monkeypatch.setattr(live.kernel.doctor, "check_bcc", _lacking("bcc"))
    ended = call_main(main, ["--iface", "lo", "--port", str(port)]).check(allowed=(2,))
    assert errors(ended) == ["error: bcc is not importable: run `python -m live doctor` (fix: the fix), "
                             "or pass --no-telemetry"]


def test_a_port_taken_between_validation_and_start_is_named():
    """The listening socket's own error, after validation passed (a race): --port, not a traceback."""
    rec = Recorder()
    port = free_port()
    assert call_main(lambda a: main(a, start=rec), ["--iface", "lo", "--port", str(port), "--no-telemetry"]).code == 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
        ended = call_main(lambda a: run_cli(lambda _: rec.plans[0].start(), a, "python -m live"), []).check(
            allowed=(2,))
    assert errors(ended) == [f"error: --port: {port} is in use"]


# --------------------------------------------------------------------------- the real entry point
def test_python_m_live_end_to_end(area):  # type: ignore[no-untyped-def]
    ended = run_module("live", ["--iface", "nosuchif0", "--port", "70000"]).check(allowed=(2,))
    assert errors(ended)[1] == "error: --port: 70000 is not a TCP port (1-65535)", ended.err
    bad = area["root"] / "binary.yaml"
    bad.write_bytes(b"\xff\xfe\x00bad")
    ended = run_module("live", ["lab", str(bad), "--out", str(area["new"])]).check(allowed=(2,))
    assert ended.err == f"error: {bad}: not UTF-8 text (byte 0xff at offset 0)\n"
    with socket.socket() as s:  # bound, not listening: a refused connection, on loopback only
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        ended = run_module("live", ["client", url, "--streams", "1", "--time-limit", "5"]).check(allowed=(2,))
    assert errors(ended)[0].startswith(f"error: {url}: no tokenpace server answers /healthz (ClientConnectorError"), \
        ended.err
    ended = run_module("live", ["doctor", "--bogus"]).check(allowed=(2,))
    assert "unrecognized arguments: --bogus" in ended.err
