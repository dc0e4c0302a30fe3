"""A ROS 2 workspace containing this repository builds with `colcon build` (see docs/build.md)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("colcon") is None, reason="colcon is installed by `make setup`")
def test_colcon_list_and_build(tmp_path):
    listed = subprocess.run(["colcon", "list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert listed.split()[:3] == ["vla_policy_ros", ".", "(ros.ament_cmake)"]
    result = subprocess.run(["bash", str(ROOT / "scripts" / "colcon_check.sh"), str(tmp_path / "ws")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "colcon check: OK" in result.stdout
    summary = re.search(r"Summary: (\d+) tests, (\d+) errors, (\d+) failures", result.stdout)  # colcon test ran pytest
    assert summary and int(summary.group(1)) > 0 and summary.group(2, 3) == ("0", "0"), result.stdout[-2000:]
    install = tmp_path / "ws" / "install" / "vla_policy_ros"
    assert (install / "share" / "vla_policy_ros" / "package.xml").exists()
    assert (install / "share" / "vla_policy_ros" / "config").is_dir()
