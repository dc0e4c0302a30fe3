"""`policy_param`: get or set a running node's parameters (what `ros2 param` does on a ROS 2 install).

    policy_param set policy_type diffusion            # node /vla_policy by default
    policy_param --node /arm/vla_policy get ddim_steps
Values are parsed as YAML scalars (10 -> int, true -> bool, 0.5 -> float). Exit 1 when rejected.
"""

from __future__ import annotations

import argparse
import sys

import rclpy
import yaml
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.parameter import Parameter, parameter_value_to_python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="policy_param", description=__doc__.split("\n")[0])
    parser.add_argument("--node", default="/vla_policy", help="fully qualified node name (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the node (default: %(default)s)")
    parser.add_argument("action", choices=["get", "set"])
    parser.add_argument("name")
    parser.add_argument("value", nargs="?")
    args = parser.parse_args(rclpy.utilities.remove_ros_args(argv if argv is not None else sys.argv)[1:])
    if args.action == "set" and args.value is None:
        parser.error("set needs a VALUE")
    rclpy.init()
    node = rclpy.create_node("policy_param_client")
    try:
        service, request = (GetParameters, GetParameters.Request(names=[args.name])) if args.action == "get" else (
            SetParameters, SetParameters.Request(parameters=[Parameter(args.name, value=yaml.safe_load(args.value))
                                                             .to_parameter_msg()]))
        client = node.create_client(service, f"{args.node}/{args.action}_parameters")
        if not client.wait_for_service(timeout_sec=args.timeout):
            print(f"policy_param: node {args.node} not found within {args.timeout} s", file=sys.stderr)
            return 1
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
        if future.result() is None:
            print("policy_param: no answer from the node", file=sys.stderr)
            return 1
        if args.action == "get":
            print(f"{args.name}: {parameter_value_to_python(future.result().values[0])}")
            return 0
        result = future.result().results[0]
        print(f"set {args.name}: {'ok' if result.successful else 'rejected: ' + result.reason}")
        return 0 if result.successful else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
