"""ROS 2 layer of the VLA policy suite: nodes that convert messages and call the vla_models policy API.

The generated messages live in the installed part of this package (`vla_policy_ros.msg`); this
source directory and the installed one are merged with pkgutil.extend_path, so the package works
from a source checkout and from an install. Never import rclpy here (importing the package must
stay cheap and ROS-free); never add a `msg/` folder to this source directory.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
