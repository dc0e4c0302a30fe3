"""Live parameters of the policy node: validation before a change is accepted, and what a change does.

Checked before acceptance (params.validate): types and ranges, a policy type with a loaded checkpoint,
the sampler / steps the serving expert takes, and `dry_run` switched off only by the node's own
arming. After a change: the typed params view is re-read; a policy or chunk-execution switch resets inference and holds;
`dry_run: true` holds (disarms).

A mixin of PolicyNode: it uses the node's params, _lock, _arming, policies, worker, instruction and
the executors, and the arming mixin's _hold.
"""

from __future__ import annotations

import threading

import dataclasses

from rcl_interfaces.msg import SetParametersResult

from . import params as P


class ParametersMixin:
    def snapshot(self):
        with self._lock:
            return self.params, self.instruction

    def _validate_parameters(self, changes) -> SetParametersResult:
        loaded = set(self.policies) or {k for k in P.EXPERT_TYPES if getattr(self.params, f"{k}_checkpoint")}
        for change in changes:
            if change.name == "dry_run" and self._arming == threading.get_ident():
                continue
            reason = P.validate(change.name, change.value, loaded, set())
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        after = {c.name: c.value for c in changes}
        if self.policies and {"policy_type", "sampler", "ddim_steps", "chunk_execution", "rtc_delay_steps"} & set(after):
            kind = after.get("policy_type", self.params.policy_type)  # the expert that will serve says whether
            sampler = after.get("sampler", self.params.sampler)  # it takes these options
            try:
                options = self.sampling_options(kind, sampler, after.get("ddim_steps", self.params.ddim_steps))
            except (TypeError, ValueError) as exc:
                return SetParametersResult(successful=False, reason=f"{kind}: {exc}")
            resolved = self.policies[kind].expert.sampling(**options).sampler
            reason = P.rtc_reason(after.get("chunk_execution", self.params.chunk_execution), kind, resolved,
                                  self.prefix_max(kind), after.get("rtc_delay_steps", self.params.rtc_delay_steps))
            if reason:
                return SetParametersResult(successful=False, reason=f"chunk_execution: {reason}")
        if self.apply_on_validation:  # Humble: no post-set callback; apply the values about to be set
            fields = {f.name for f in dataclasses.fields(P.NodeParams)}
            self._apply_parameters(changes, {k: v for k, v in after.items() if k in fields})
        return SetParametersResult(successful=True)

    def prefix_max(self, kind: str) -> int:
        """The loaded `kind` expert's expert.prefix_max: how many given rows it was trained with (0: none)."""
        return self.policies[kind].expert.config.prefix_max

    def sampling_options(self, kind: str, sampler: str, steps: int) -> dict:
        """The node's sampler/steps parameters as the options the `kind` expert takes (checked by it)."""
        return self.policies[kind].expert.options_for(sampler=sampler, steps=steps)  # raises, naming what it expected

    def _apply_parameters(self, changes, pending: dict | None = None) -> None:
        """After a change was accepted; `pending`: the new values when they are not set yet (Humble)."""
        names = {c.name for c in changes}
        with self._lock:
            before = self.params
            self.params = P.read(self) if pending is None else dataclasses.replace(before, **pending)
            if "instruction" in names:
                self.instruction = self.params.instruction
            for executor in (self.command_executor, self.action_executor):
                if executor is not None:
                    executor.execute_steps = self.params.execute_steps
                    executor.mode = P.EXECUTOR_MODE[self.params.chunk_execution]
        for name in ("policy_type", "chunk_execution"):  # a switch: inference afresh, and a hold until its chunk
            if name in names and getattr(self.params, name) != getattr(before, name) and self.worker is not None:
                self.worker.reset()
                if name == "chunk_execution" and self.action_executor is not None:
                    self.action_executor.reset()
                self._hold(f"{name.replace('_', ' ')} switched to {getattr(self.params, name)}")
        own = self._arming == threading.get_ident()  # the node's own disarm: its caller holds next, saying why
        if "dry_run" in names and self.params.dry_run and not before.dry_run and not self.holding and not own:
            self._hold("disarmed: dry_run set")  # (a fault that disarms has held already, and says why)
        self.get_logger().info("parameters: " + ", ".join(f"{c.name}={c.value}" for c in changes))
