"""PID: hold the reader's buffer at a setpoint, in seconds of reading.

Origin: seed 000's roadmap ("PID 控制器（替代当前 Sigmoid 映射）"), written the way simple-pid
writes a PID (``PID(Kp, Ki, Kd, setpoint, output_limits)`` called with the measurement and dt).

The process variable is the client buffer ``client_buffer_est / reading_tps``: how many seconds
the reader could go on if no further token arrived. The error is ``setpoint_s - buffer_s``. The
output is a correction on top of the reader's own pace, which is the rate that holds any buffer
steady:

    rate = reading_tps + kp * e + I + kd * (-d buffer_s / dt)

* ``I`` accumulates ``ki * e * dt`` and is clamped so that ``reading_tps + I`` stays within
  ``[min_tps, max_tps]`` (simple-pid's anti-windup: the integral term is clamped to the output
  limits), so a long stall does not wind it up beyond what the output can ever use;
* the derivative acts on the measurement, not the error (no kick when nothing changes);
* dt comes from successive ``obs.t_s``; the first interval has no dt and is proportional only;
* the output is clamped to ``[min_tps, max_tps]``.

It looks only at the reader's buffer: a dead link drains the buffer and the PID asks for more.
"""

from __future__ import annotations

from pydantic import Field

from controllers.base import Controller, Decision, Observation, Params
from controllers.registry import register


class PidParams(Params):
    setpoint_s: float = Field(default=30.0, gt=0, description="client buffer to hold, in seconds of reading")
    kp_tps_per_s: float = Field(default=2.0, gt=0, description="proportional gain: tokens/s per second of error")
    ki_tps_per_s2: float = Field(default=0.1, gt=0, description="integral gain: tokens/s per (s of error x s)")
    kd_tps: float = Field(default=0.5, gt=0, description="derivative gain: tokens/s per (second of buffer per second)")
    min_tps: float = Field(default=0.5, gt=0, description="lowest output (tokens/s)")
    max_tps: float = Field(default=60.0, gt=0, description="highest output (tokens/s)")


@register("PID on client buffer", "#17becf")
class Pid(Controller):
    name = "pid"
    Params = PidParams
    params: PidParams

    def reset(self) -> None:
        self.integral_tps = 0.0  # the integral term I (already multiplied by ki)
        self._last_t_s: float | None = None
        self._last_buffer_s: float | None = None

    def decide(self, obs: Observation) -> Decision:
        p = self.params
        lo, hi = min(p.min_tps, p.max_tps), max(p.min_tps, p.max_tps)
        reading = max(obs.reading_tps, 0.0)
        buffer_s = max(0.0, obs.client_buffer_est) / max(reading, 1e-9)
        error_s = p.setpoint_s - buffer_s
        derivative = 0.0
        if self._last_t_s is not None and obs.t_s > self._last_t_s:
            dt = obs.t_s - self._last_t_s
            self.integral_tps += p.ki_tps_per_s2 * error_s * dt
            assert self._last_buffer_s is not None
            derivative = -p.kd_tps * (buffer_s - self._last_buffer_s) / dt
        # anti-windup: the integral alone may not push the output past its limits
        self.integral_tps = min(max(self.integral_tps, lo - reading), hi - reading)
        self._last_t_s, self._last_buffer_s = obs.t_s, buffer_s
        rate = reading + p.kp_tps_per_s * error_s + self.integral_tps + derivative
        return Decision(min(max(rate, lo), hi))
