"""Spinning an executor while the node tears down its own entities (lifecycle cleanup, on_error).

rclpy's executor collects the node's waitables, then adds each to the wait set; a QoS event handler of a
subscription or publisher destroyed in between (by a cleanup running on another executor thread) raises
`InvalidHandle` out of `spin_once` (ros2/rclpy#1284), and `executor.spin()` ends: the node stops answering
services, timers and topics although it is still up. The next collection no longer holds the destroyed
entity, so spinning on is the fix.
"""

from __future__ import annotations

from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

InvalidHandle = _rclpy.InvalidHandle


def spin(executor, context, timeout_sec: float = 0.05, until=None) -> int:
    """Spin `executor` while `context` is ok (and `until()` is false when given); an entity destroyed while the
    wait set was built is skipped, not fatal. Returns how many such collections were retried."""
    retried = 0
    while context.ok() and not (until is not None and until()):
        try:
            executor.spin_once(timeout_sec=timeout_sec)
        except InvalidHandle:
            retried += 1
    return retried
