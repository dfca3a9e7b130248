"""What ``python -m live`` decides (:class:`LiveConfig`), checked when it is made: the server's port and
controller, the engine's serving model (the scenario's ``server``), an upstream to proxy instead,
where to record, and the pacing loop's interval. :meth:`LiveConfig.from_scenario` takes a scenario's
values, as the simulator would run them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

import controllers
from scenarios.schema import ServerSpec

__all__ = ["LiveConfig"]


class LiveConfig(BaseModel):
    """Everything ``python -m live`` decides; defaults serve the built-in engine on 127.0.0.1:8000."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0 = any free port")
    controller: str = "unpaced"
    controller_params: dict[str, Any] = Field(default_factory=dict)
    control_interval_s: float = Field(0.1, gt=0)
    server: ServerSpec = Field(default_factory=lambda: ServerSpec(),  # type: ignore[call-arg]
                               description="the engine's serving model (seed 002)")
    seed: int = 1
    model: str = "tokenpace-engine"
    default_reading_tps: float = Field(10.0, gt=0, description="reader pace when a request gives none")
    default_max_tokens: int = Field(256, ge=1)
    max_tokens_limit: int = Field(32_768, ge=1)
    ttft_expected_s: float = Field(1.0, ge=0)
    slo_qoe: float = Field(0.9, ge=0, le=1)
    upstream: str | None = Field(None, description="OpenAI-compatible base URL to proxy (vLLM, Ollama)")
    upstream_api_key: str | None = None
    upstream_model: str | None = Field(None, description="model name sent upstream (default: the request's)")
    upstream_buffer_tokens: int = Field(4096, ge=1, description="stop reading upstream beyond this many held tokens")
    record_dir: Path | None = None
    duration_s: float | None = Field(None, gt=0, description="serve this long, then stop (None: until cancelled)")
    ack_grace_s: float = Field(2.0, ge=0, description="after a stream ends, wait this long for its last ACKs")
    bytes_per_token: int | None = Field(
        None, gt=0, description="pad each token's SSE event to this many bytes on the wire (the scenario's "
        "bytes_per_token, so the lab carries what the simulator models); None: OpenAI's chunks as they are")
    iface: str | None = None
    fault: str | None = None
    tcp_congestion: str | None = Field(
        None, description="TCP_CONGESTION set on every client connection (the lab: the path's cc); None: the "
        "system default")
    scenario: dict[str, Any] | None = Field(None, description="resolved scenario, recorded in run.json")
    entry: str | None = Field(
        None, description="the name the recording goes by -- its folder DIR/<entry>/, its key in run.json and "
        "the controller /healthz reports (which names the load client's half): the lab's CONTROLLER@SCHEDULER "
        "entries (scenarios.loader.split_entry); None: the controller's name")

    @property
    def record_name(self) -> str:
        """The recording's folder and run.json key: the entry, else the controller."""
        return self.entry or self.controller

    @model_validator(mode="after")
    def _scheduler(self) -> LiveConfig:
        from sim.model import schedulers

        if self.server.replicas > 1:
            raise ValueError(f"server.replicas: the live server is one engine (got {self.server.replicas}); "
                             "run one server per replica behind your own router")
        if self.server.prefix_cache is not None:
            raise ValueError("server.prefix_cache: the simulator's only (the live engine has no prefix cache)")

        spec = self.server.scheduler
        if spec.name not in schedulers.REGISTRY:
            raise ValueError(f"server.scheduler.name: {schedulers.UnknownScheduler(spec.name)}")
        problems = schedulers.validate_params(spec.name, spec.params)
        if problems:
            key, msg = problems[0]
            raise ValueError(f"server.scheduler.params.{key}: {msg}")
        return self

    @model_validator(mode="after")
    def _controller(self) -> LiveConfig:
        try:
            info = controllers.get(self.controller)
        except controllers.UnknownController as exc:  # a KeyError; pydantic reports ValueErrors
            raise ValueError(str(exc)) from None
        if info.sim_only:
            raise ValueError(f"controller {self.controller!r} needs the simulator's knowledge (sim only)")
        problems = controllers.validate_params(self.controller, self.controller_params)
        if problems:
            key, msg = problems[0]
            raise ValueError(f"controller_params.{key}: {msg}")
        return self

    @classmethod
    def from_scenario(cls, scenario: Any, controller: str = "unpaced", **overrides: Any) -> LiveConfig:
        """Take the server model, control interval, seed, reader defaults and the controller's
        parameters from a scenario (a path, a built-in name, a LoadedScenario or a Scenario)."""
        from scenarios import LoadedScenario, Scenario, load_scenario
        from scenarios.loader import find_scenario

        resolved: dict[str, Any] | None
        if isinstance(scenario, LoadedScenario):
            scn, resolved = scenario.scenario, scenario.resolved()
        elif isinstance(scenario, Scenario):
            scn, resolved = scenario, json.loads(scenario.model_dump_json(by_alias=True))
        else:
            loaded = load_scenario(find_scenario(scenario))
            scn, resolved = loaded.scenario, loaded.resolved()
        values: dict[str, Any] = {
            "controller": controller,
            "controller_params": dict(scn.controllers.get(controller, {})),
            "control_interval_s": scn.control_interval_s,
            "server": scn.server,
            "seed": scn.seed,
            "default_reading_tps": max(0.1, float(scn.clients.reading_tps.mean())),
            "ttft_expected_s": scn.clients.ttft_expected_s,
            "slo_qoe": scn.slo.qoe,
            "bytes_per_token": scn.workload.bytes_per_token,
            "scenario": resolved,
        }
        values.update(overrides)
        return cls(**values)
