"""Peak memory of a session bag -> LeRobotDataset v3 (the documented two steps: import-bag, export-lerobot) and back.

    .venv/bin/python bench/lerobot_bag_memory.py [--seconds 60] [--json docs/bench/lerobot_bag_memory.json]

Writes the synthetic needle-insertion session of bench/import_memory.py (5 camera views as JPEG at
5 Hz, 640x360; a 1026-channel sensor at 650 Hz; 100 Hz joint states and end-effector poses) for
`--seconds`, then runs `vla data import-bag`, `vla data export-lerobot` and `vla data import-lerobot` each in its own child
process and reports each child's peak RSS (getrusage of a wrapper that waits for it), the wall
times and the sizes. The acceptance (issue 26): every step under 1 GB RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_memory import VIEWS, size_of, write_session  # noqa: E402

# Runs argv as a child and prints that child's peak RSS (MB) as its last line.
WRAP = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(rc)")


def measured(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one `vla` command in a child process."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", WRAP, sys.executable, "-m", "vla_training.cli", *argv],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    return float(run.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the synthetic session")
    parser.add_argument("--vcodec", default="libsvtav1", help="video codec of the export (default: %(default)s)")
    parser.add_argument("--workdir", help="where the bag and outputs go (default: a temporary directory)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vla-lerobot-bag-"))
    work.mkdir(parents=True, exist_ok=True)
    bag, episodes, lerobot = work / "session", work / "episodes", work / "lerobot"
    for path in (bag, episodes, lerobot, work / "back"):
        shutil.rmtree(path, ignore_errors=True)
    session = write_session(bag, 0.0, seconds=args.seconds)
    topics = work / "topics.yaml"
    topics.write_text(yaml.safe_dump({
        "instruction": "insert the needle", "anchor_view": "view1", "state": "/joint_states", "sensor": "/oct/packets",
        "views": {f"view{v}": f"/camera/view{v}/image_raw/compressed" for v in range(1, VIEWS + 1)},
        "actions": {"source": "ee_pose_delta", "topic": "/ee_pose"}}))
    import_mb, import_s = measured(["data", "import-bag", str(bag), "--topics", str(topics), "--out", str(episodes),
                                    "--no-progress"])
    export_mb, export_s = measured(["data", "export-lerobot", str(episodes), str(lerobot), "--repo-id", "lab/needle",
                                    "--vcodec", args.vcodec, "--no-progress"])
    back_mb, back_s = measured(["data", "import-lerobot", str(lerobot), str(work / "back"), "--no-progress"])
    info = json.loads((lerobot / "meta" / "info.json").read_text())
    figures = {
        "command": f"bench/lerobot_bag_memory.py --seconds {args.seconds:g} --vcodec {args.vcodec}",
        "session": session, "bag_bytes": size_of(bag),
        "import_bag": {"peak_rss_mb": round(import_mb, 1), "seconds": round(import_s, 1),
                       "episode_bytes": size_of(episodes)},
        "export_lerobot": {"peak_rss_mb": round(export_mb, 1), "seconds": round(export_s, 1),
                           "lerobot_bytes": size_of(lerobot), "fps": info["fps"],
                           "frames": info["total_frames"], "sensor_window": info["features"].get(
                               "observation.sensor", {}).get("shape"),
                           "video_bytes": size_of(lerobot / "videos"), "data_bytes": size_of(lerobot / "data")},
        "import_lerobot": {"peak_rss_mb": round(back_mb, 1), "seconds": round(back_s, 1),
                           "episode_bytes": size_of(work / "back")},
        "under_1gb": max(import_mb, export_mb, back_mb) < 1024,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if figures["under_1gb"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
