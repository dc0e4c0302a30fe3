"""Start the VLA policy node on a robot.

    ros2 launch vla_policy_ros policy.launch.py policy_type:=diffusion \
        regression_checkpoint:=/path/run_reg/best diffusion_checkpoint:=/path/run_diff/best \
        namespace:=arm sensor_topic:=/force_sensor/wrench \
        command_interface:=servo_twist command_topic:=/servo_node/delta_twist_cmds params_file:=/path/arm.yaml

The node is a managed (lifecycle) node and, on a robot, waits unconfigured (`autostart` defaults to false
here): a lifecycle manager, or `ros2 lifecycle set /vla_policy configure` then `activate`, brings it up
(autostart:=true configures and activates it by itself). It starts in dry run whatever the arguments say
about commands; arm it with `ros2 service call /vla_policy/enable std_srvs/srv/SetBool "{data: true}"`
(docs/ros.md, "Deploy on your arm", "Lifecycle manager").

Parameters come from `params_file` (default: the package's config/policy.yaml); the arguments
below override it only when given. Topic arguments remap the node's default input names.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

# argument -> (default, description). Empty defaults mean "keep the params file's value".
OVERRIDES = {
    "policy_type": ("", "regression | diffusion | flow"),
    "regression_checkpoint": ("", "checkpoint directory of the regression expert"),
    "diffusion_checkpoint": ("", "checkpoint directory of the diffusion expert"),
    "flow_checkpoint": ("", "checkpoint directory of the flow-matching expert"),
    "device": ("", "cpu | cuda | cuda:N"),
    "dry_run": ("", "true: chunks only, no commands (false does not arm: the node starts disarmed; ~/enable arms)"),
    "autostart": ("false", "true: configure + activate at start; false (robot default): wait for a lifecycle "
                           "manager or `ros2 lifecycle set`"),
    "command_interface": ("", "joint_trajectory | servo_twist | pose_target | none"),
    "command_topic": ("", "the controller's command topic ('' = the interface's usual one)"),
    "command_frame": ("", "frame of cartesian commands ('' = the pose messages' frame)"),
    "heartbeat_topic": ("", "std_msgs/Bool heartbeat from the operator's station ('' = none)"),
}
BOOLEANS = ("dry_run", "autostart")
# argument -> (node's default topic name, description)
REMAPS = {
    "sensor_topic": ("sensor/wrench", "high-rate sensor topic"),
    "state_topic": ("joint_states", "robot state topic"),
    "instruction_topic": ("instruction", "std_msgs/String instruction topic"),
}


def _node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {name: arg(name) for name in OVERRIDES if arg(name) != ""}
    for name in BOOLEANS:
        if name in overrides:
            overrides[name] = overrides[name].lower() in ("true", "1", "yes")
    remappings = [(default, arg(name)) for name, (default, _) in REMAPS.items() if arg(name) != default]
    return [LifecycleNode(package="vla_policy_ros", executable="policy_node", name="vla_policy",
                          namespace=arg("namespace"), parameters=[arg("params_file"), overrides],
                          remappings=remappings, output="screen", emulate_tty=True)]


def generate_launch_description():
    default_params = PathJoinSubstitution([FindPackageShare("vla_policy_ros"), "config", "policy.yaml"])
    args = [DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters YAML"),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node")]
    args += [DeclareLaunchArgument(n, default_value=d, description=desc) for n, (d, desc) in OVERRIDES.items()]
    args += [DeclareLaunchArgument(n, default_value=d, description=desc) for n, (d, desc) in REMAPS.items()]
    return LaunchDescription(args + [OpaqueFunction(function=_node)])
