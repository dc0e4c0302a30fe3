"""The policy node's diagnostics (diagnostic_msgs/DiagnosticArray on /diagnostics): level, message, values."""

from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


def rate(times) -> float:
    """Events per second over the recorded monotonic times."""
    return (len(times) - 1) / max(times[-1] - times[0], 1e-9) if len(times) > 1 else 0.0


def diagnostics(node) -> DiagnosticArray:
    """ERROR while holding on a fault, WARN while waiting or after an error, OK while serving."""
    p, inputs, worker = node.params, node.inputs, node.worker
    values = {"lifecycle": "active" if node.active else ("inactive" if worker is not None else "unconfigured"),
              "armed": node.armed(), "holding": node.holding, "command_interface": p.command_interface,
              "policy_type": p.policy_type, "sampler": p.sampler, "ddim_steps": p.ddim_steps, "dry_run": p.dry_run,
              "loaded": ",".join(sorted(node.policies)), "limit_mode": p.limit_mode, "last_limit": node.last_limit,
              "limits_missing": node.limits_missing() if worker is not None else "", "configure_error": node.configure_error}
    waiting, stale, error = False, [], ""
    if inputs is not None:
        stale = inputs.watchdog.stale(node._now())
        waiting = (bool(inputs.sync.names) and inputs.sync.latest() is None) or \
            (inputs.sensor is not None and inputs.sensor.newest_stamp() is None)
        values.update({"waiting_for_inputs": waiting, "stale_inputs": ",".join(stale),
                       "stamp_guard_resets": inputs.stamp_guard.resets, **inputs.stats})
        period = inputs.frame_period() if inputs.spec.views else None
        if period and node.worker is not None:
            values.update({"camera_period_s": f"{period:.3f}", "action_period_s": f"{node.dt:.3f}"})
            if not 0.5 < period / node.dt < 2.0:  # trained at another rate: the chunk's timing is off
                rate_warning = (f"cameras arrive every {period:.3f} s; the checkpoint was trained with one action every "
                                f"{node.dt:.3f} s (dt)")
                values["rate_warning"] = rate_warning
                node.get_logger().warning(rate_warning, throttle_duration_sec=30.0)
    if worker is not None:
        error = worker.last_error
        values.update({"last_latency_ms": f"{worker.latencies[-1] * 1e3:.1f}" if worker.latencies else "",
                       "last_error": error,
                       **{f"{k}_hz": f"{rate(v):.1f}" for k, v in worker.event_times.items() if len(v) > 1}})
    if node.servo_setup is not None:
        values.update({"servo_setup": node.servo_setup.state, "servo_status": node.servo_setup.describe()})
    if node.trajectory_action is not None:
        values.update({f"trajectory_action_{k}": v for k, v in node.trajectory_action.counts.items()})
    values["command_hz"] = f"{rate(node.tick_times):.1f}"
    values["sensor_to_action_ms"] = f"{1e3 * float(np.median(node.sensor_to_action)):.1f}" if node.sensor_to_action else ""
    for name, executor in (("executor", node.command_executor), ("action_executor", node.action_executor)):
        if executor is not None:
            values.update({f"{name}_{k}": v for k, v in executor.counts.items()})
    if node.holding and node.armed() is False and node.holding.startswith("disarmed"):
        level, message = DiagnosticStatus.OK, node.holding
    elif node.holding:
        level, message = DiagnosticStatus.ERROR, f"hold: {node.holding}"
    elif stale or waiting or error or node.configure_error:
        level = DiagnosticStatus.WARN
        message = ("stale: " + ", ".join(stale)) if stale else "waiting for inputs" if waiting else \
            (error or node.configure_error)
    else:
        level, message = DiagnosticStatus.OK, "armed" if node.armed() else "serving (dry run)"
    status = DiagnosticStatus(level=level, name=node.get_fully_qualified_name(), hardware_id="vla_policy",
                              message=message, values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    return array
