"""``python -m live doctor``: can live mode run on this machine, and if not, exactly what to do.

Each check prints ``ok``, ``WARN`` (live mode runs, something is degraded) or ``FAIL`` (it cannot
run), what it found, and the command that fixes it. ``run_doctor()`` returns 0 only when nothing
failed. ``scripts/setup_live.sh`` performs every fix on a Debian-like machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

__all__ = ["Check", "checks", "main", "run_doctor"]

Status = Literal["ok", "WARN", "FAIL"]
SETUP = "sudo scripts/setup_live.sh"
CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _cap_eff() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def check_privileges() -> Check:
    eff = _cap_eff()
    have = {name for name, bit in CAPS.items() if eff >> bit & 1}
    bpf_ok = "CAP_BPF" in have or "CAP_SYS_ADMIN" in have
    if os.geteuid() == 0 and bpf_ok and "CAP_NET_ADMIN" in have:
        return Check("privileges", "ok", f"root with {', '.join(sorted(have))}")
    if bpf_ok and "CAP_NET_ADMIN" in have and "CAP_SYS_ADMIN" in have:
        return Check("privileges", "ok", f"capabilities {', '.join(sorted(have))}")
    missing = sorted(set(CAPS) - have)
    return Check("privileges", "FAIL", f"uid {os.geteuid()}, missing {', '.join(missing)}",
                 "run as root: sudo python -m live ...")


def check_tracefs() -> Check:
    from live.kernel.telemetry import tracefs_dir

    d = tracefs_dir()
    if d is not None:
        return Check("tracefs", "ok", f"mounted at {d}")
    return Check("tracefs", "FAIL", "no tracefs at /sys/kernel/tracing or /sys/kernel/debug/tracing",
                 "sudo mount -t tracefs tracefs /sys/kernel/tracing")


def check_bcc() -> Check:
    from live.kernel.telemetry import BccUnavailable, import_bcc

    try:
        bcc = import_bcc()
    except BccUnavailable as exc:
        return Check("bcc", "FAIL", str(exc.__cause__ or exc),
                     "sudo apt-get install python3-bpfcc bpfcc-tools (or: " + SETUP + ")")
    where = Path(getattr(bcc, "__file__", "?")).parent
    version = getattr(bcc, "__version__", "?")
    return Check("bcc", "ok", f"bcc {version} from {where}")


def check_headers() -> Check:
    rel = platform.release()
    build = Path("/lib/modules", rel, "build")
    if build.exists():
        target = build.resolve()
        note = "" if rel in str(target) else " (another version's headers: fine, probes use tracepoint layouts only)"
        return Check("kernel headers", "ok", f"{build} -> {target}{note}")
    cands = sorted(Path("/usr/src").glob("linux-headers-*-amd64")) if Path("/usr/src").is_dir() else []
    fix = (f"sudo mkdir -p /lib/modules/{rel} && sudo ln -s {cands[-1]} {build}" if cands
           else f"sudo apt-get install linux-headers-{rel} (or linux-headers-amd64; then {SETUP})")
    return Check("kernel headers", "FAIL", f"{build} missing (BCC compiles against it)", fix)


def check_tracepoints() -> list[Check]:
    from live.kernel.telemetry import tracefs_dir, tracepoint_has_field

    if tracefs_dir() is None:
        return [Check("tracepoints", "FAIL", "cannot look: tracefs not mounted", "mount tracefs first (above)")]
    out = []
    for tp, need in (("tcp_probe", "sock_cookie"), ("tcp_retransmit_skb", "skaddr")):
        if not tracepoint_has_field("tcp", tp, "sport"):
            out.append(Check(f"tcp:{tp}", "FAIL", "tracepoint missing",
                             "needs Linux >= 4.16 with CONFIG_TRACEPOINTS (a stock distribution kernel has it)"))
        elif not tracepoint_has_field("tcp", tp, need):
            out.append(Check(f"tcp:{tp}", "FAIL", f"present but without `{need}`", "needs Linux >= 5.10"))
        else:
            out.append(Check(f"tcp:{tp}", "ok", "present"))
    return out


def check_compile() -> Check:
    """Compile and attach the real telemetry program for a moment (the check that settles it)."""
    from live.kernel.telemetry import BccTelemetry

    try:
        with BccTelemetry([9], interval_s=1.0) as tel:
            tel.poll()
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        return Check("probe load", "FAIL", f"telemetry program did not load: {msg[-1] if msg else exc!r}",
                     f"check the lines above; then {SETUP}")
    return Check("probe load", "ok", "tcp_telemetry.c compiles, loads and attaches")


def check_netem() -> Check:
    from live.kernel.faults import netem_available

    if netem_available():
        return Check("sch_netem", "ok", "available: faults use netem (delay, jitter, loss, GE, rate, outage)")
    return Check("sch_netem", "WARN", "not available: faults use the fallback (tbf + tc-bpf); delay faults "
                 "are skipped", "sudo modprobe sch_netem (Ubuntu/Debian: linux-modules-extra-$(uname -r)); "
                 "to check the netem backend without it, in a user-mode-linux kernel that has it: "
                 "sudo apt-get install user-mode-linux kmod && sudo python -m live.kernel.uml")


def check_bpffs() -> Check:
    if os.path.ismount("/sys/fs/bpf"):
        return Check("bpffs", "ok", "mounted at /sys/fs/bpf")
    return Check("bpffs", "WARN", "not mounted: the tc-bpf loss fallback cannot be attached",
                 "sudo mount -t bpf bpf /sys/fs/bpf")


def check_binaries() -> list[Check]:
    out = []
    for tool, pkg, required in (("tc", "iproute2", True), ("ip", "iproute2", True), ("nsenter", "util-linux", True),
                                ("unshare", "util-linux", True), ("nft", "nftables", False),
                                ("ss", "iproute2", False), ("iperf3", "iperf3", False)):
        path = shutil.which(tool)
        if path:
            out.append(Check(tool, "ok", path))
        else:
            out.append(Check(tool, "FAIL" if required else "WARN", "not found", f"sudo apt-get install {pkg}"))
    return out


def checks(*, compile_probe: bool = True) -> list[Check]:
    out: list[Check] = [check_privileges(), check_tracefs(), check_bcc(), check_headers()]
    out += check_tracepoints()
    if compile_probe and all(c.status != "FAIL" for c in out):
        out.append(check_compile())
    out += [check_netem() if out[0].status == "ok" else Check("sch_netem", "WARN", "not checked (not root)"),
            check_bpffs()]
    out += check_binaries()
    return out


def run_doctor(*, compile_probe: bool = True, file: TextIO | None = None,
               checks_fn: Callable[..., list[Check]] = checks) -> int:
    """Print every check with its fix; 0 when live mode can run, 1 otherwise."""
    f = file or sys.stdout
    results = checks_fn(compile_probe=compile_probe)
    width = max(len(c.name) for c in results)
    for c in results:
        print(f"{c.status:>4}  {c.name:<{width}}  {c.detail}", file=f)
        if c.fix and c.status != "ok":
            print(f"{'':>4}  {'':<{width}}  fix: {c.fix}", file=f)
    failed = [c for c in results if c.status == "FAIL"]
    print(f"\nlive mode: {'ready' if not failed else 'NOT ready'}"
          + (f" ({len(failed)} failed: {', '.join(c.name for c in failed)})" if failed else ""), file=f)
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m live doctor", description=__doc__.splitlines()[0])
    ap.add_argument("--no-compile", action="store_true", help="skip compiling and attaching the probe")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_doctor(compile_probe=not args.no_compile)


if __name__ == "__main__":
    from scenarios.cli_errors import run_cli

    raise SystemExit(run_cli(main, None, "python -m live doctor"))
