"""lanes.run_lanes: jobs run in order within a lane, lanes in parallel, progress counted from files, a
failing job stops everything and is named."""

import sys
import time

import pytest

from vla_training.demos.lanes import Job, LaneError, _Progress, run_lanes


def _job(name, code, **kwargs):
    return Job(name, [sys.executable, "-c", code], **kwargs)


def test_lanes_run_in_parallel_and_in_order(tmp_path):
    log = tmp_path / "order.txt"
    step = "import time; open({0!r}, 'a').write('start {1} %f\\n' % time.time()); time.sleep(0.5); " \
           "open({0!r}, 'a').write('end {1} %f\\n' % time.time())"
    lanes = [[_job(n, step.format(str(log), n)) for n in ("a1", "a2")],
             [_job(n, step.format(str(log), n)) for n in ("b1", "b2")]]
    run_lanes(lanes, tmp_path / "logs", threads=1, progress=False, poll_s=0.05)
    t = {(kind, name): float(at) for kind, name, at in (line.split() for line in log.read_text().splitlines())}
    assert len(t) == 8
    assert t["end", "a1"] <= t["start", "a2"] and t["end", "b1"] <= t["start", "b2"]  # in order within a lane
    assert t["start", "b1"] < t["end", "a1"] and t["start", "a1"] < t["end", "b1"]  # the lanes overlapped
    assert all(job.seconds >= 0.5 for lane in lanes for job in lane)
    assert (tmp_path / "logs" / "a1.log").exists()


def test_child_processes_get_the_thread_count(tmp_path):
    out = tmp_path / "threads.txt"
    run_lanes([[_job("t", f"import os; open({str(out)!r}, 'w').write(os.environ['OMP_NUM_THREADS'])")]],
              tmp_path, threads=3, progress=False, poll_s=0.05)
    assert out.read_text() == "3"


def test_progress_counts_matching_lines(tmp_path):
    progress = tmp_path / "metrics.jsonl"
    code = (f"import time\nwith open({str(progress)!r}, 'a') as fh:\n"
            "    for i in range(5):\n        fh.write('{\"train/loss\": 1}\\n{\"val/loss\": 1}\\n'); fh.flush(); time.sleep(0.05)")
    job = _job("train", code, total=5, progress_file=progress, progress_key="train/loss")
    run_lanes([[job]], tmp_path, progress=True, poll_s=0.02)  # the bar is drawn (to stderr) and counts
    assert _Progress(job).poll() == 5


def test_a_failing_job_stops_every_lane_and_is_named(tmp_path):
    marker = tmp_path / "never.txt"
    lanes = [[_job("slow", "import time; time.sleep(30)")],
             [_job("broken", "import sys; print('the reason'); sys.exit(3)"),
              _job("after", f"open({str(marker)!r}, 'w')")]]
    start = time.perf_counter()
    with pytest.raises(LaneError, match=r"broken failed \(exit 3\)[\s\S]*the reason"):
        run_lanes(lanes, tmp_path / "logs", progress=False, poll_s=0.05)
    assert time.perf_counter() - start < 20  # the sleeping job was terminated
    assert not marker.exists()  # nothing after the failure ran


def test_a_job_that_cannot_start_is_a_named_failure(tmp_path):
    lanes = [[Job("missing", [str(tmp_path / "no-such-program")])], [_job("other", "pass")]]
    with pytest.raises(LaneError, match=r"missing could not start"):
        run_lanes(lanes, tmp_path / "logs", progress=False, poll_s=0.05)


def test_a_job_waits_for_the_file_another_lane_makes(tmp_path):
    made, log = tmp_path / "snapshot", tmp_path / "order.txt"
    note = "import time; open({0!r}, 'a').write('{1} %f\\n' % time.time())"
    lanes = [[_job("slow", "import time; time.sleep(0.6)"), _job("make", note.format(str(log), "made") + f"; open({str(made)!r}, 'w')")],
             [_job("use", note.format(str(log), "used"), after=made)]]
    run_lanes(lanes, tmp_path / "logs", progress=False, poll_s=0.05)
    t = dict(line.split() for line in log.read_text().splitlines())
    assert float(t["made"]) <= float(t["used"])


def test_a_job_waiting_for_a_file_nobody_makes_is_a_named_failure(tmp_path):
    lanes = [[_job("quick", "pass")], [_job("use", "pass", after=tmp_path / "never")]]
    with pytest.raises(LaneError, match=r"use waited for .*never, which no job made"):
        run_lanes(lanes, tmp_path / "logs", progress=False, poll_s=0.05)
