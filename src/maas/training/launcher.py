"""Run the tasks of a distributed job as local processes, and never leave one behind.

A job is a list of :class:`Task` s. *Main* tasks do the work and must all exit with status 0
(the training processes); *service* tasks serve the others until told to stop (parameter-
server and worker servers of ``ParameterServerStrategy``). :class:`LocalJob`:

- starts the services first and waits, bounded, until each listens on its port, then the
  main tasks, each in its own process group, with its own environment (``TF_CONFIG``);
- streams every line a task prints to the log, prefixed with the task's name, and into
  ``<log_dir>/<name>.log``;
- fails fast: when a task dies (or a service exits early) it stops all the others and raises
  :class:`TaskFailed`, naming the task, its exit status or signal and its last lines;
- bounds time: the job must show it is running (``ready``, e.g. a first training step)
  within ``startup_timeout_s``, and finish within ``timeout_s``, else :class:`JobTimeout`;
- stops every child on any way out: success, failure, time-out, Ctrl-C, an exception (and,
  on Linux, when the launching process itself dies: each child gets ``PDEATHSIG``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # SIGTERM, then this long, then SIGKILL
POLL_S = 0.1
TAIL_LINES = 25
# TensorFlow's C++ start-up notes (glog format: I/W/E + date, e.g. "no CUDA driver" on a CPU
# machine) go to the task's log file and the debug log only; fatal ones ("F...") stay visible.
_NATIVE_CHATTER = re.compile(r"^([IWE]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl)")


class JobError(RuntimeError):
    """A local job failed; every one of its processes has been stopped."""


class TaskFailed(JobError):
    """A task exited with an error or was killed."""


class JobTimeout(JobError):
    """The job did not start, or did not finish, in its time."""


@dataclass(frozen=True)
class Task:
    name: str  # e.g. "worker-1": log prefix and log file name
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)  # added to the launcher's own
    service: bool = False  # serves the main tasks until stopped
    port: int | None = None  # a service is up once this loopback port accepts connections


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


class LocalJob:
    """The processes of one local job. Use :func:`run_job`, or ``start`` then ``wait``."""

    def __init__(
        self,
        tasks: Sequence[Task],
        *,
        log_dir: str | Path,
        timeout_s: float,
        startup_timeout_s: float,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique: {names}")
        if not any(not task.service for task in tasks):
            raise ValueError("a job needs at least one main (non-service) task")
        self.tasks = list(tasks)
        self.log_dir = Path(log_dir)
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.ready = ready
        self.processes: dict[str, subprocess.Popen] = {}
        self.tails: dict[str, collections.deque[str]] = {}
        self._readers: list[threading.Thread] = []
        self.started_at = 0.0

    @property
    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def start(self) -> None:
        """Start the services, wait until they listen, then start the main tasks."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        try:
            services = [task for task in self.tasks if task.service]
            for task in services:
                self._spawn(task)
            self._wait_for_services(services)
            for task in self.tasks:
                if not task.service:
                    self._spawn(task)
        except BaseException:
            self.stop()
            raise
        (self.log_dir / "tasks.json").write_text(json.dumps(self.pids, indent=2))

    def wait(self) -> None:
        """Block until every main task has exited 0, then stop the services.

        Raises:
            TaskFailed: a task died; all others were stopped.
            JobTimeout: the job did not get going, or did not finish, in time.
        """
        try:
            self._monitor()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop every task still running: SIGTERM to its process group (the task and anything
        it started), then SIGKILL after a grace period. Exited tasks are left alone: their
        process id may already belong to another program."""
        running = [p for p in self.processes.values() if p.poll() is None]
        for process in running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            if process.poll() is None:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for reader in self._readers:
            reader.join(timeout=5)

    def _spawn(self, task: Task) -> None:
        env = {**os.environ, **task.env, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            list(task.argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_die_with_parent if os.name == "posix" else None,  # noqa: PLW1509
        )
        self.processes[task.name] = process
        self.tails[task.name] = collections.deque(maxlen=TAIL_LINES)
        reader = threading.Thread(
            target=self._stream, args=(task.name, process), name=f"log-{task.name}", daemon=True
        )
        reader.start()
        self._readers.append(reader)
        log.info("started %s (pid %d)", task.name, process.pid)

    def _stream(self, name: str, process: subprocess.Popen) -> None:
        with (self.log_dir / f"{name}.log").open("w", encoding="utf-8") as out:
            for raw in process.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip()
                out.write(line + "\n")
                out.flush()
                self.tails[name].append(line)
                level = logging.DEBUG if _NATIVE_CHATTER.match(line) else logging.INFO
                log.log(level, "[%s] %s", name, line)

    def _wait_for_services(self, services: Sequence[Task]) -> None:
        for task in services:
            if task.port is None:
                continue
            while not _listening(task.port):
                self._check_deaths()
                self._check_time(starting=True)
                time.sleep(POLL_S)

    def _monitor(self) -> None:
        mains = [task.name for task in self.tasks if not task.service]
        is_ready = self.ready is None
        while True:
            # Success first: once every main task is done, a service quitting is no failure.
            if all(self.processes[name].poll() == 0 for name in mains):
                log.info("all %d main task(s) finished", len(mains))
                return
            self._check_deaths()
            if not is_ready:
                is_ready = self.ready()
            self._check_time(starting=not is_ready)
            time.sleep(POLL_S)

    def _check_deaths(self) -> None:
        for task in self.tasks:
            code = self.processes[task.name].poll() if task.name in self.processes else None
            if code is None or (code == 0 and not task.service):
                continue
            tail = "\n".join(f"    {line}" for line in self.tails.get(task.name, ()))
            what = "stopped before the job ended" if task.service and code == 0 else ""
            raise TaskFailed(
                f"task {task.name} {what or describe_exit(code)}; stopping the job. "
                f"Its last lines (full log: {self.log_dir / (task.name + '.log')}):\n{tail}"
            )

    def _check_time(self, *, starting: bool) -> None:
        elapsed = time.monotonic() - self.started_at
        if starting and elapsed > self.startup_timeout_s:
            raise JobTimeout(
                f"the job did not start within {self.startup_timeout_s:.0f} s (no training "
                f"step yet); logs in {self.log_dir}"
            )
        if elapsed > self.timeout_s:
            raise JobTimeout(f"the job did not finish within {self.timeout_s:.0f} s")


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("localhost", port), timeout=1):
        return True
    return False


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def run_job(
    tasks: Sequence[Task],
    *,
    log_dir: str | Path,
    timeout_s: float,
    startup_timeout_s: float,
    ready: Callable[[], bool] | None = None,
) -> None:
    """Start a local job, wait for it, stop whatever is left. See :class:`LocalJob`."""
    job = LocalJob(
        tasks,
        log_dir=log_dir,
        timeout_s=timeout_s,
        startup_timeout_s=startup_timeout_s,
        ready=ready,
    )
    job.start()
    job.wait()
