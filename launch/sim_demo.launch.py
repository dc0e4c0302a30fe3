"""The closed loop through ROS 2 without hardware: Meta-World behind robot topics + the policy node.

    ros2 launch vla_policy_ros sim_demo.launch.py checkpoint:=/path/run/best episodes:=20 placement_seed:=1

Both nodes get their parameters from vla_training.demos.ros_demo.demo_parameters (the same as
`vla ros-demo`): one simulated clock on /clock, the policy node with use_sim_time, lockstep stepping.
The launch ends when the simulated robot has run its episodes (its summary is printed).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGS = {"checkpoint": ("", "checkpoint directory (a run's best/)"), "episodes": ("10", "episodes to run"),
        "placement_seed": ("1", "MT1 placement seed (held out: not the training seed 0)"),
        "execute_steps": ("8", "actions executed per chunk"), "task": ("peg-insert-side-v3", "Meta-World task"),
        "max_steps": ("300", "steps per episode"),
        "command_interface": ("chunk", "chunk (the sim executes chunks) | servo_twist | pose_target (the armed node "
                                       "commands the sim as MoveIt Servo / a cartesian controller)")}


def _nodes(context):
    from vla_training.demos.ros_demo import demo_parameters

    def arg(name):
        return LaunchConfiguration(name).perform(context)

    if not arg("checkpoint"):
        raise RuntimeError("sim_demo.launch.py: checkpoint:=DIR is required (a checkpoint directory)")
    params = demo_parameters(arg("checkpoint"), episodes=int(arg("episodes")),
                             placement_seed=int(arg("placement_seed")), execute_steps=int(arg("execute_steps")),
                             task=arg("task"), max_steps=int(arg("max_steps")),
                             command_interface=arg("command_interface"))
    policy = Node(package="vla_policy_ros", executable="policy_node", name="vla_policy",
                  parameters=[params["vla_policy"]], output="screen")
    sim = Node(package="vla_policy_ros", executable="sim_robot_node", name="sim_robot",
               parameters=[params["sim_robot"]], output="screen")
    done = RegisterEventHandler(OnProcessExit(target_action=sim, on_exit=[EmitEvent(event=Shutdown())]))
    return [policy, sim, done]


def generate_launch_description():
    args = [DeclareLaunchArgument(name, default_value=d, description=desc) for name, (d, desc) in ARGS.items()]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
