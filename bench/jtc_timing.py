"""Executed joint speed of the armed policy node on a JointTrajectoryController that samples in time.

    python bench/jtc_timing.py [--latency 0.05 0.15] [--seconds 3] [--json FILE]

A kinematic 6-joint arm (URDF limits 1 rad/s) runs the controller's trajectory sampling
(`test/jtc_execution.py`: from its current state on receipt, past points skipped) and publishes its
joint states at 500 Hz; camera frames reach the node `latency` seconds after they were taken, and a
tiny policy asks for up to 3x the velocity limit. Printed per latency: the largest executed joint
speed over the URDF limit (1.0 = at the limit; > 1 a violation, a jump shows as a large value) and
how far the arm went. Drives the node through its topics and ~/enable only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

from jtc_execution import arm_policy_checkpoint, drive_arm  # noqa: E402
from ros_helpers import RosHarness  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.05, 0.15], help="camera-to-node delay (s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="armed time per latency")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="jtc-timing-") as tmp:
        checkpoint = arm_policy_checkpoint(Path(tmp))
        for latency in args.latency:
            ros = RosHarness()
            try:
                run = drive_arm(ros, checkpoint, latency, args.seconds)
                ratio, travelled, node = run.ratio, run.travelled, run.node
                results.append({"latency_s": latency, "max_speed_ratio": round(ratio, 4),
                                "travelled_rad": round(travelled, 3), "commands": node.stats["commands"],
                                "points_due_before_publication": node.stats["points_due_before_publication"]})
            finally:
                ros.close()
            r = results[-1]
            print(f"latency {latency * 1e3:.0f} ms: max executed joint speed {r['max_speed_ratio']:.3f} x the URDF "
                  f"limit; {r['commands']} trajectories, the arm travelled {r['travelled_rad']:.2f} rad")
    if args.json:
        Path(args.json).write_text(json.dumps({"limit_rad_s": 1.0, "results": results}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
