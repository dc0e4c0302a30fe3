"""The executor keeps spinning while a node destroys its own topics (lifecycle cleanup on another thread)."""

from __future__ import annotations

import pytest
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.waitable import NumberOfEntities, Waitable
from ros_helpers import next_domain_id

from vla_policy_ros.spinning import InvalidHandle, spin


class DestroyedWhileCollected(Waitable):
    """What a subscription's QoS event handler does when the subscription is destroyed after the executor
    collected the node's waitables: entering it and adding it to the wait set raise InvalidHandle; by the next
    collection the node no longer lists it."""

    def __init__(self, node):
        super().__init__(node.default_callback_group)
        self.node = node

    def __enter__(self):
        raise InvalidHandle("cannot use Destroyable because destruction was requested")

    def __exit__(self, *exc):
        return None

    def add_to_wait_set(self, wait_set):
        self.node.remove_waitable(self)
        raise InvalidHandle("cannot use Destroyable because destruction was requested")

    def get_num_entities(self):
        return NumberOfEntities()

    def is_ready(self, wait_set):
        return False

    def take_data(self):
        return None

    async def execute(self, taken_data):
        return None


@pytest.fixture()
def node():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=next_domain_id())
    node = Node("spinning_test", context=context)
    executor = MultiThreadedExecutor(context=context)
    executor.add_node(node)
    yield node, executor, context
    executor.shutdown(timeout_sec=2.0)
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def test_a_destroyed_event_handler_ends_rclpys_spin_but_not_ours(node):
    node, executor, context = node
    ticks = []
    node.create_timer(0.01, lambda: ticks.append(1))
    node.add_waitable(DestroyedWhileCollected(node))
    with pytest.raises(InvalidHandle):  # the failure mode exists in this rclpy (ros2/rclpy#1284)
        for _ in range(20):
            executor.spin_once(timeout_sec=0.05)
    node.add_waitable(DestroyedWhileCollected(node))
    retried = spin(executor, context, until=lambda: len(ticks) >= 10)
    assert retried == 1 and len(ticks) >= 10  # one collection retried, then the timer fires on

