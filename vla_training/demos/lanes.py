"""Command-line jobs in parallel lanes: each lane runs its jobs one after another as processes, all
lanes at once, with one progress bar per lane.

Why: on a small CPU machine, two single-threaded processes get through more training than one process
using two threads (the CPU demo preset at batch 64 on the 2-core CI machine: 4.7 steps/s in each of two
one-thread processes, 6 steps/s in one two-thread process). Each job reports its progress by appending
lines to a file the parent counts: a training run's metrics.jsonl (one `train/loss` line per step) or a
closed-loop evaluation's episode log (one line per episode).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


@dataclass
class Job:
    name: str
    argv: list[str]
    total: int = 0  # units of progress (training steps, episodes); 0: the bar shows the job without a count
    progress_file: Path | None = None
    progress_key: str = ""  # count the lines of progress_file that contain this
    seconds: float = 0.0  # wall time, filled in when the job has run
    after: Path | None = None  # start only once this file exists (made by a job of another lane)


class LaneError(RuntimeError):
    pass


class _Progress:
    """Counts the matching lines appended to a file since the job started (read incrementally)."""

    def __init__(self, job: Job) -> None:
        self.job, self.offset, self.count, self.partial = job, 0, 0, b""

    def poll(self) -> int:
        path = self.job.progress_file
        if path is None or not path.exists():
            return self.count
        with open(path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()  # a line still being written
        key = self.job.progress_key.encode()
        self.count += sum(1 for line in lines if key in line)
        return self.count


def _environment(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _terminate(processes: list[subprocess.Popen | None]) -> None:
    for proc in processes:
        if proc is not None and proc.poll() is None:
            proc.terminate()


def threads_per_lane(lanes: int) -> int:
    """The machine's cores shared evenly between `lanes` parallel processes (at least one each)."""
    return max(1, (os.cpu_count() or 1) // max(lanes, 1))


def run_lanes(lanes: list[list[Job]], log_dir: str | Path, threads: int | None = None, progress: bool = True,
              poll_s: float = 0.5) -> None:
    """Run every lane's jobs in order, the lanes in parallel. Each job's output goes to LOG_DIR/<name>.log.

    threads: CPU threads per process (default: the machine's cores shared evenly between the lanes).
    A failing job stops every lane (the running processes are terminated) and raises LaneError naming the
    job, its exit status and the end of its log. A job with `after` waits for that file (another lane's
    product); if every other lane ends without making it, that is a failure too.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or threads_per_lane(len(lanes))
    env = _environment(threads)
    stop = threading.Event()
    current: list[Job | None] = [None] * len(lanes)
    running: list[subprocess.Popen | None] = [None] * len(lanes)
    failures: list[str] = []

    def wait_for(i: int, job: Job) -> bool:
        """Until job.after exists; False when the lanes stop or no other lane is left to make it."""
        while not job.after.exists():
            others = [w for k, w in enumerate(workers) if k != i and w.is_alive()]
            if stop.is_set() or not others:
                if not stop.is_set():
                    failures.append(f"{job.name} waited for {job.after}, which no job made")
                    stop.set()
                return False
            time.sleep(poll_s)
        return True

    def lane(i: int) -> None:
        for job in lanes[i]:
            if stop.is_set():
                return
            current[i] = job
            if job.after is not None and not wait_for(i, job):
                return
            log = log_dir / f"{job.name.replace(' ', '_')}.log"
            start = time.perf_counter()
            with open(log, "w") as fh:
                try:
                    proc = subprocess.Popen(job.argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
                except OSError as exc:  # e.g. no such program: a failure like any other, not a dead thread
                    failures.append(f"{job.name} could not start ({job.argv[0]}): {exc}")
                    stop.set()
                    return
                running[i] = proc
                code = proc.wait()
            running[i] = None
            job.seconds = time.perf_counter() - start
            if code != 0:
                if not stop.is_set():
                    failures.append(f"{job.name} failed (exit {code}); the end of {log}:\n{_tail(log)}")
                stop.set()
                return
        current[i] = None

    workers = [threading.Thread(target=lane, args=(i,), daemon=True) for i in range(len(lanes))]
    bars = [tqdm(total=0, position=i, desc=f"lane {i + 1}", disable=not progress, leave=True)
            for i in range(len(lanes))]
    shown: list[tuple[Job, _Progress] | None] = [None] * len(lanes)

    def refresh(i: int, job: Job | None) -> None:
        bar = bars[i]
        if shown[i] is not None and shown[i][0] is not job:  # the last count of a job that has finished
            done, counter = shown[i]
            bar.n = min(counter.poll(), done.total) if done.total else 0
            bar.refresh()
            shown[i] = None
        if job is None:
            return
        if shown[i] is None:
            shown[i] = (job, _Progress(job))
            bar.reset(total=job.total or None)
            bar.total = job.total or None  # reset(total=None) would keep the last job's total
            bar.set_description(f"lane {i + 1}: {job.name}")
        bar.n = min(shown[i][1].poll(), job.total) if job.total else 0
        bar.refresh()

    try:
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            if stop.is_set():
                _terminate(running)
            for i in range(len(lanes)):
                refresh(i, current[i])
            time.sleep(poll_s)
        for i in range(len(lanes)):
            refresh(i, None)
    except BaseException:
        stop.set()
        _terminate(running)
        raise
    finally:
        for w in workers:
            w.join(timeout=30)
        for bar in bars:
            bar.close()
    if failures:
        raise LaneError(failures[0])
