"""Running a sweep on this machine: ``lsl fit`` child processes, a few at a time, teachers before students."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

from lsl.sweep.run_state import LOG_FILE, mark_done, mark_failed, write_run_files
from lsl.sweep.schema import Run, Sweep


class LocalRunner:
    """Runs a sweep's pending runs, ``parallel`` at a time, each ``lsl fit`` in a child process.

    Each child gets ``cpu_count // parallel`` threads (OMP_NUM_THREADS) unless the environment sets it, so
    parallel runs do not fight over cores. A student waits for its teacher; a failed teacher fails it. Runs
    that failed before (``sweep_failed.json``: a diverged loss fails the same way again) are not retried unless
    ``retry_failed``. ``lsl_command`` is how a child starts ``lsl`` (tests put a stand-in there).
    """

    def __init__(self, sweep: Sweep, runs: list[Run], parallel: int, out=None, poll_s: float = 0.5,
                 retry_failed: bool = False, lsl_command: list[str] | None = None) -> None:
        self.sweep = sweep
        self.lsl_command = lsl_command or [sys.executable, "-m", "lsl"]
        self.runs = runs
        self.parallel = parallel
        self.out = out or sys.stdout
        self.poll_s = poll_s
        self.failed: list[Run] = [run for run in runs if run.failed and not run.done and not retry_failed]
        self.blocked = [run for run in runs if not run.done and run.teacher in self.failed]
        self.pending = [run for run in runs if not run.done and run not in self.failed + self.blocked]
        self.failed += self.blocked
        self.finished = sum(run.done for run in runs)
        self.running: dict[str, tuple[Run, subprocess.Popen, float, Any]] = {}
        self.durations: list[float] = []

    def run(self) -> int:
        """Run everything pending; returns the number of failed runs. On Ctrl-C or SIGTERM the running runs are
        stopped (each resumes from its last.ckpt next time) and KeyboardInterrupt propagates."""
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return self._run()
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self) -> int:
        self._say(f"{len(self.runs)} runs, {self.finished} already done, {len(self.pending)} to run, "
                  f"{self.parallel} at a time"
                  + (f"; {len(self.failed) - len(self.blocked)} failed before, not retried (--retry-failed)"
                     if self.failed else "")
                  + (f"; {len(self.blocked)} wait on a failed teacher" if self.blocked else ""))
        try:
            while self.pending or self.running:
                self._start_ready()
                self._collect_finished()
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self._stop_all()
            raise
        self._say(f"sweep {self.sweep.name}: {self.finished} done, {len(self.failed)} failed"
                  + "".join(f"\n  failed: {run.name} (log: {run.directory / LOG_FILE})" for run in self.failed))
        return len(self.failed)

    def _start_ready(self) -> None:
        for run in list(self.pending):
            if len(self.running) >= self.parallel:
                return
            if run.teacher is not None and run.teacher in self.failed:
                self.pending.remove(run)
                self.failed.append(run)
                self._say(f"skipped {run.name}: its teacher {run.teacher.name} failed")
            elif run.teacher is None or run.teacher.done:
                self.pending.remove(run)
                self._start(run)

    def _start(self, run: Run) -> None:
        write_run_files(self.sweep, run)
        log = open(run.directory / LOG_FILE, "a")
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.parallel)))
        command = [*self.lsl_command, *run.fit_arguments()]
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.running[run.name] = (run, process, time.monotonic(), log)
        resumed = " (resuming from its last.ckpt)" if "--ckpt_path" in command else ""
        self._say(f"started {run.name}{resumed}")

    def _collect_finished(self) -> None:
        for name, (run, process, started, log) in list(self.running.items()):
            if process.poll() is None:
                continue
            del self.running[name]
            log.close()
            seconds = time.monotonic() - started
            if process.returncode == 0:
                mark_done(run, seconds)
                self.durations.append(seconds)
                self.finished += 1
                self._say(f"finished {run.name} in {_duration(seconds)}")
            else:
                mark_failed(run, process.returncode, seconds)
                self.failed.append(run)
                self._say(f"FAILED {run.name} (exit {process.returncode}); log: {run.directory / LOG_FILE}")

    def _stop_all(self) -> None:
        for run, process, _, log in self.running.values():
            process.kill()
            process.wait()
            log.close()
        self._say(f"interrupted: {len(self.running)} running runs stopped; run the same command to resume")

    def _say(self, message: str) -> None:
        print(f"[{self._progress()}] {message}", file=self.out, flush=True)

    def _progress(self) -> str:
        left = len(self.pending) + len(self.running)
        text = f"{self.finished}/{len(self.runs)} done, {len(self.running)} running, {len(self.failed)} failed"
        if self.durations and left:
            estimate = sum(self.durations) / len(self.durations) * left / self.parallel
            text += f", ~{_duration(estimate)} left"
        return text


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
