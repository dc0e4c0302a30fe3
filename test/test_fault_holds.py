"""Every fault of the acceptance list ends in a hold within the watchdog period, the reason in /diagnostics
(fault_holds_interop.py, one parametrised test, run where the stand-in control_msgs imports: the controller's
reject and abort come through FollowJointTrajectory)."""

import re

from fault_holds_interop import FAULTS
from ros_helpers import run_with_standins, standins_prefix


def test_every_fault_ends_in_a_hold():
    run = run_with_standins(standins_prefix(), "fault_holds_interop.py")
    passed = set(re.findall(r"PASSED \S+\[(\w+)\]", run.stdout))
    assert run.returncode == 0 and passed == set(FAULTS), run.stdout[-6000:] + run.stderr[-2000:]
