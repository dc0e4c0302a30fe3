#!/usr/bin/env bash
# Builds this repository the way a ROS 2 user does: a workspace with the repo under src/, `colcon list`,
# `colcon build`, then imports the installed messages and Python packages from install/.
# Usage (inside the venv, or with /opt/ros/<distro>/setup.bash sourced): bash scripts/colcon_check.sh [WORKSPACE]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
ws=${1:-$(mktemp -d)}
mkdir -p "$ws/src"
ln -sfn "$repo" "$ws/src/vla_policy_ros"
cd "$ws"
export AMENT_PREFIX_PATH=${AMENT_PREFIX_PATH:-${VIRTUAL_ENV:-}}
export CMAKE_PREFIX_PATH=${CMAKE_PREFIX_PATH:-${VIRTUAL_ENV:-}}
echo "== colcon list"
colcon list
echo "== colcon build"
python_exe=$(command -v python3)
colcon build --event-handlers console_cohesion- --cmake-args -DPython3_EXECUTABLE="$python_exe" -DBUILD_TESTING=ON
site="$ws/install/vla_policy_ros/lib/python3.11/site-packages"
echo "== import from the colcon install ($site)"
(cd "$ws" && PYTHONPATH="$site" LD_LIBRARY_PATH="$ws/install/vla_policy_ros/lib:${LD_LIBRARY_PATH:-}" python3 -I -c "
import sys; sys.path.insert(0, '$site')
from vla_policy_ros.msg import ActionChunk
import vla_models, vla_training, vla_policy_ros
assert vla_models.__file__.startswith('$site'), vla_models.__file__
print('installed:', ActionChunk.__name__, vla_models.__file__)
")
ls "$ws/install/vla_policy_ros/share/vla_policy_ros"
echo "== colcon test (${VLA_COLCON_TESTS:=vla_policy_ros_components}; VLA_COLCON_TESTS=. runs the whole suite)"
colcon test --event-handlers console_cohesion- --ctest-args -R "$VLA_COLCON_TESTS"
colcon test-result --verbose
echo "colcon check: OK ($ws)"
