"""A local multi-node Ray cluster: a head and more nodes, each a process of its own.

For tests, benchmarks and trying the Ray engine on one machine. Each node is
``python -m maas.serving.ray.cluster`` (what ``ray start --block`` does, without the Ray
Client server and the autoscaler monitor, whose start-up on a busy 2-core machine made the
raylet give up on its agents), so stopping it stops exactly the processes it started (never
``ray stop``, which would stop every Ray on the machine). On a shared machine run it inside
a private network namespace (only 127.0.0.1), or Ray binds to the machine's address.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# On a loaded 2-core machine a node's agents take longer to start than Ray waits by default.
STARTUP_NICE = -10
STARTED = "Ray runtime started."
SITE = (
    Path(__file__).resolve().parent / "site"
)  # its sitecustomize runs in every node process  # what a node prints once it has registered
SLOW_MACHINE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",  # loopback only: no token to hand to every client
    "RAY_agent_register_timeout_ms": "300000",
    # Serve's controller kills a proxy that is not ready within 5 s, three times in a row;
    # under load one took 37 s to import and bind here, and `serve.start` then failed.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
}
# Ray Serve's throughput-optimized settings (router and user code on the replica's own event
# loop, gRPC between deployments, buffered request-path logs, GC frozen after start-up),
# minus direct ingress (the front door is maas's own, maas.serving.ray.front, or, under a
# RayService, Ray Serve's proxy) and with Serve's logs still on stderr: its access logs are
# off (engine.QUIET_LOGS), and what is left, a replica lost or replaced, belongs in the
# server's log. Read by every Serve process when it starts: a cluster started elsewhere
# needs them in its nodes' environment.
SERVE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    "RAY_SERVE_LOG_TO_STDERR": "1",
}


class LocalCluster:
    """Node processes on 127.0.0.1; :meth:`stop` ends them and their children.

    Args:
        work: folder for the nodes' logs.
        port: the head's GCS port.
        object_store_mb: each node's object store.
        env: more environment for the nodes (over this process's, ``SLOW_MACHINE_ENV``,
            ``SERVE_ENV`` and a ``PYTHONPATH`` that starts with ``SITE``; a ``PYTHONPATH`` here
            replaces that one).
    """

    def __init__(
        self,
        work: Path,
        *,
        port: int = 6379,
        object_store_mb: int = 100,
        env: dict[str, str] | None = None,
    ) -> None:
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.object_store_mb = object_store_mb
        # The site folder first on the nodes' path: every process they start defers a grammar
        # that `import ray` would build (maas.serving.ray.site.sitecustomize).
        path = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))
        self.env = {
            **os.environ,
            **SLOW_MACHINE_ENV,
            **SERVE_ENV,
            "PYTHONPATH": path,
            **(env or {}),
        }
        # Short: Ray's socket paths must fit in 107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="rmaas", dir="/tmp")
        self.nodes: list[subprocess.Popen] = []
        self._logs: list = []

    def add_node(
        self,
        num_cpus: int,
        *,
        head: bool = False,
        timeout: float = 180,
        attempts: int = 4,
        env: dict[str, str] | None = None,
    ) -> int:
        """Start a node (the head first); return its index once the cluster sees it.

        A raylet whose agents start too slowly (a loaded machine) exits at once: it is
        started again, up to ``attempts`` times. ``env``: this node's own environment over
        the cluster's (its raylet and every worker it starts inherit it).
        """
        for attempt in range(1, attempts + 1):
            index = self._start_node(num_cpus, head=head, env=env)
            try:
                self.wait_nodes(index + 1, timeout)
                self._renice(index, 0)
                return index
            except RuntimeError as error:
                if attempt == attempts:
                    raise
                log.warning("%s; starting it again (%d/%d)", error, attempt + 1, attempts)
                self.nodes.pop()
                if head:
                    shutil.rmtree(self.temp_dir, ignore_errors=True)
                    self.temp_dir = tempfile.mkdtemp(prefix="rmaas", dir="/tmp")
        raise AssertionError("unreachable")

    def _start_node(self, num_cpus: int, *, head: bool, env: dict[str, str] | None) -> int:
        boost = ["nice", "-n", str(STARTUP_NICE)] if os.geteuid() == 0 else []
        command = [*boost, sys.executable, "-m", "maas.serving.ray.cluster"]
        command += ["--num-cpus", str(num_cpus), "--temp-dir", self.temp_dir]
        command += ["--object-store-mb", str(self.object_store_mb)]
        command += ["--agent-ports", str(self.port + 1000 + 10 * len(self.nodes))]
        command += ["--head", "--port", str(self.port)] if head else ["--address", self.address]
        index = len(self.nodes)
        log_file = (self.work / f"node{index}.log").open("a")
        self.nodes.append(
            subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env={**self.env, **(env or {})}
            )
        )
        self._logs.append(log_file)
        return index

    def wait_nodes(self, count: int, timeout: float) -> None:
        """Wait until each node says it runs (in its log: no extra process)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, node in enumerate(self.nodes):
                if node.poll() is not None:
                    raise RuntimeError(f"ray node {index} exited; see {self.work}/node{index}.log")
            logs = [(self.work / f"node{i}.log").read_text(errors="replace") for i in range(count)]
            if all(text.count(STARTED) > text.count("timed out during startup") for text in logs):
                return
            time.sleep(1.0)
        raise TimeoutError(f"{count} Ray nodes not up within {timeout:g} s; see {self.work}")

    def node_pids(self, index: int) -> list[int]:
        """The processes of one node: its launcher and everything it started."""
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(self.nodes[index].pid)
            return [process.pid, *(child.pid for child in process.children(recursive=True))]
        return []

    def _renice(self, index: int, niceness: int) -> None:
        import psutil

        for pid in self.node_pids(index):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).nice(niceness)

    def kill_node(self, index: int) -> None:
        """Kill a node at once (SIGKILL to all its processes), as a crashed machine would."""
        for pid in reversed(self.node_pids(index)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.nodes[index].wait(30)

    def stop(self) -> None:
        """Stop every node (the head last) and whatever they left behind."""
        pids = {index: self.node_pids(index) for index in range(len(self.nodes))}
        for index in reversed(range(len(self.nodes))):
            node = self.nodes[index]
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
                try:
                    node.wait(60)
                except subprocess.TimeoutExpired:
                    node.kill()
            for pid in pids[index]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for log_file in self._logs:
            log_file.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def prewrite_agent_ports(node_class: type, first_port: int, *, stagger: bool) -> None:
    """Write the agents' (fixed) ports for the raylet before it starts waiting for them.

    The raylet waits a fixed ~15 s for its dashboard and runtime-env agents to write their
    ports to files and aborts otherwise; on a busy 2-core machine their start-up takes
    longer. The ports are fixed here, so the files can be written first (the agents write
    the same numbers when they are up; until then the raylet retries its connections). On
    the head, the raylet also starts only once the API server is up (``stagger``): both are
    Python processes with heavy imports.
    """
    from ray import _raylet

    start_ray_processes = node_class.start_ray_processes
    names = (
        _raylet.METRICS_AGENT_PORT_NAME,
        _raylet.METRICS_EXPORT_PORT_NAME,
        _raylet.DASHBOARD_AGENT_LISTEN_PORT_NAME,
        _raylet.RUNTIME_ENV_AGENT_PORT_NAME,
    )

    def start(self) -> None:
        log = Path(self._logs_dir) / "dashboard.log"
        deadline = time.monotonic() + (60 if stagger else 0)
        while time.monotonic() < deadline and not (log.exists() and log.stat().st_size):
            time.sleep(0.5)
        for offset, name in enumerate(names):
            _raylet.persist_port(self._session_dir, self._node_id, name, first_port + offset)
        start_ray_processes(self)

    node_class.start_ray_processes = start


def run_node(args: argparse.Namespace) -> int:
    """One node, in this process, until SIGTERM: what ``ray start --block`` does, minus the
    Ray Client server and the autoscaler monitor (fewer processes competing as it starts)."""
    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        node_ip_address="127.0.0.1",
        num_cpus=args.num_cpus,
        object_store_memory=args.object_store_mb * 1024**2,
        temp_dir=args.temp_dir,
        include_dashboard=False,
        no_monitor=True,
        metrics_agent_port=args.agent_ports,
        metrics_export_port=args.agent_ports + 1,
        dashboard_agent_listen_port=args.agent_ports + 2,
        runtime_env_agent_port=args.agent_ports + 3,
    )
    prewrite_agent_ports(ray._private.node.Node, args.agent_ports, stagger=args.head)
    if args.head:
        params.gcs_server_port = args.port
    else:
        params.gcs_address = args.address
    node = ray._private.node.Node(params, head=args.head, shutdown_at_exit=True, spawn_reaper=True)
    print(STARTED, node.address if args.head else args.address, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # atexit stops the node's processes
    while True:
        time.sleep(3600)


def main() -> int:
    parser = argparse.ArgumentParser(description="one node of a LocalCluster")
    parser.add_argument("--head", action="store_true")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--address")
    parser.add_argument("--num-cpus", type=int, required=True)
    parser.add_argument("--object-store-mb", type=int, default=100)
    parser.add_argument("--temp-dir", required=True)
    parser.add_argument("--agent-ports", type=int, required=True)
    return run_node(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
