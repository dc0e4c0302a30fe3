"""The FollowJointTrajectory client against an action server, with a stand-in control_msgs built by
rosidl (the real package is not installable here; the stand-in has the same names and fields)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build_standin(tmp: Path) -> Path:
    prefix, env = tmp / "install", dict(os.environ, AMENT_PREFIX_PATH=sys.prefix)
    configure = ["cmake", "-S", str(ROOT / "test" / "standin" / "control_msgs"), "-B", str(tmp / "build"),
                 f"-DCMAKE_INSTALL_PREFIX={prefix}", f"-DCMAKE_PREFIX_PATH={sys.prefix}",
                 f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"]
    for cmd in (configure, ["cmake", "--build", str(tmp / "build"), "-j2"], ["cmake", "--install", str(tmp / "build")]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return prefix


def test_follow_joint_trajectory_goals_cancel_abort_and_reject(tmp_path):
    """trajectory_action_interop.py: goals and cancel on a hold; an aborted goal (path tolerance) disarms and
    holds while preempted ones do not; a rejected goal disarms and holds."""
    prefix = _build_standin(tmp_path)
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT / "test"), os.environ.get("PYTHONPATH", "")]),
               LD_LIBRARY_PATH=os.pathsep.join([str(prefix / "lib"), os.environ.get("LD_LIBRARY_PATH", "")]),
               AMENT_PREFIX_PATH=os.pathsep.join([str(prefix), os.environ.get("AMENT_PREFIX_PATH", sys.prefix)]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "test" / "trajectory_action_interop.py")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "3 passed" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
