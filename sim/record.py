"""Writes one simulated controller's run in the results layout (DESIGN.md) as the simulation goes.

The writer is the one every driver uses (:class:`analysis.results.RunRecorder`: the rows, their
columns and decimals exist there once); this module only says which files a simulation writes and
turns a finished :class:`~sim.stream.SimStream` into its tokens and streams.csv row. The recorder
is the node's log (server.csv, events.csv, memory_events.csv) and takes telemetry, link samples and
finished streams. Analysis reads these files and nothing else.

With ``server.replicas`` N > 1 each replica logs through its own :class:`ReplicaLog`: its steps go to
``replicas.csv`` (server.csv's columns after a ``replica`` column, 0 to N-1; each replica numbers its
own batches) and there is no server.csv, whose rows describe one node; events and memory events of
every replica share events.csv and memory_events.csv (request ids are unique). With N = 1 the files
are exactly what they were before replicas existed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.results import REPLICAS_CSV, RunRecorder

if TYPE_CHECKING:
    from sim.stream import SimStream

#: the files of a simulated controller's folder (request_traces.csv is written at the end)
SIM_FILES = ("tokens.csv", "streams.csv", "telemetry.csv", "server.csv", "events.csv", "memory_events.csv",
             "links.csv")


class Recorder(RunRecorder):
    """One simulated controller's folder: the writer with the simulator's files, fed finished streams."""

    def __init__(self, out_dir: Path, ttft_expected_s: float, kv_tokens: int, replicas: int = 1) -> None:
        files = [REPLICAS_CSV if f == "server.csv" and replicas > 1 else f for f in SIM_FILES]
        super().__init__(out_dir, files, kv_tokens=kv_tokens)
        self.ttft_expected_s = ttft_expected_s
        self._written: set[str] = set()

    def stream(self, s: SimStream) -> None:
        """Write a finished stream's tokens and summary row (once)."""
        req = s.req
        if req.stream_id in self._written:
            return
        self._written.add(req.stream_id)
        r = s.reader
        n = s.seq.generated
        # Every time here is a float (a simulated time after at least one step), NaN when missing;
        # t_displayed of a token is set exactly when it is received.
        self.write_stream(
            stream_id=req.stream_id, path=req.path, arrival_s=req.arrival_s, prompt_tokens=req.prompt_tokens,
            output_tokens=req.output_tokens, reading_tps=req.reading_tps, ttft_expected_s=self.ttft_expected_s,
            outcome=r.state, token_rows=n, t_generated=s.t_generated, t_sent=s.sent_times(n),
            t_acked=s.acked_times(n), t_received=r.t_received, t_displayed=r.t_displayed, generated=n,
            displayed=r.received, stall_s=r.stall_s, patience_s=req.patience_s, end_s=r.end_s)

    def flush_streams(self, streams: Iterable[SimStream]) -> None:
        for s in streams:
            self.stream(s)


class ReplicaLog:
    """Replica ``replica``'s node log: its steps as replicas.csv rows, its events and memory events as
    everyone's (the recorder must be made with ``replicas`` > 1)."""

    __slots__ = ("event", "memory", "rec", "replica")

    def __init__(self, rec: Recorder, replica: int) -> None:
        self.rec = rec
        self.replica = replica
        self.event = rec.event
        self.memory = rec.memory

    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None:
        self.rec.replica_step(self.replica, t, batch_id, batch_size, batch_tokens, duration_s, waiting, running,
                              swapped, completed, kv_used)
