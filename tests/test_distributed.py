"""maas.training.distributed and maas.training.launcher without training: cluster
descriptions, capacity, sharding arithmetic, and real child processes that succeed, die, hang
or linger."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import small_params_dict

from maas import cli
from maas.ports import free_port, free_ports
from maas.training import cli as training_cli
from maas.training import distributed, launcher

WORKERS = {"worker": ["localhost:2222", "localhost:2223"]}


def tf_config(cluster: dict, task_type: str = "worker", index: int = 0) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


# --- TF_CONFIG -------------------------------------------------------------------------------


def test_tf_config_round_trip_and_chief():
    task = distributed.parse_tf_config(tf_config(WORKERS, "worker", 1))
    assert (task.task_type, task.task_index, task.name) == ("worker", 1, "worker-1")
    assert not task.is_chief and task.count("worker") == 2
    assert distributed.parse_tf_config(task.to_json()) == task
    assert distributed.parse_tf_config(tf_config(WORKERS)).is_chief  # worker 0 without chief
    ps_cluster = {"chief": ["a:1"], "worker": ["b:1"], "ps": ["c:1", "[::1]:2"]}
    assert distributed.parse_tf_config(tf_config(ps_cluster, "chief")).is_chief
    assert not distributed.parse_tf_config(tf_config(ps_cluster, "worker")).is_chief


def test_kubeflow_tf_config_is_accepted():
    # What Kubeflow's training operator sets in a TFJob pod (service names, "environment").
    hosts = [f"maas-train-worker-{i}.team-ml.svc:2222" for i in range(2)]
    text = json.dumps(
        {
            "cluster": {"worker": hosts},
            "task": {"type": "worker", "index": 1},
            "environment": "cloud",
        }
    )
    task = distributed.parse_tf_config(text)
    assert task.cluster["worker"] == tuple(hosts) and task.name == "worker-1"
    distributed.check_cluster(task, "multi_worker")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "TF_CONFIG is not set"),
        ("  ", "TF_CONFIG is not set"),
        ("{'cluster': 1", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', '"cluster" mapping'),
        (tf_config({"evaluatorx": ["a:1"]}, "evaluatorx"), "unknown job 'evaluatorx'"),
        (tf_config({"worker": "a:1"}), "must list one or more"),
        (tf_config({"worker": ["hostonly"]}), "not a 'host:port'"),
        (tf_config({"worker": ["a:70000"]}), "not a 'host:port'"),
        (tf_config({"worker": ["a:1", "a:1"]}), "address used by two tasks"),
        (tf_config({"chief": ["a:1", "b:1"], "worker": ["c:1"]}), "at most one chief"),
        (json.dumps({"cluster": WORKERS}), '"task"'),
        (tf_config(WORKERS, "ps"), "task type 'ps' is not a job"),
        (tf_config(WORKERS, "worker", 2), "index 2 out of range"),
        (json.dumps({"cluster": WORKERS, "task": {"type": "worker", "index": "0"}}), "integer"),
    ],
)
def test_malformed_tf_config_is_named(text, message):
    with pytest.raises(distributed.DistributeError, match=message.replace("(", r"\(")):
        distributed.parse_tf_config(text)


def test_cluster_must_fit_the_strategy():
    with_ps = distributed.parse_tf_config(tf_config({**WORKERS, "ps": ["p:1"]}))
    with pytest.raises(distributed.DistributeError, match="use strategy parameter_server"):
        distributed.check_cluster(with_ps, "multi_worker")
    workers_only = distributed.parse_tf_config(tf_config(WORKERS))
    with pytest.raises(distributed.DistributeError, match="no 'chief' job"):
        distributed.check_cluster(workers_only, "parameter_server")
    distributed.check_cluster(workers_only, "multi_worker")


def test_local_cluster_on_free_loopback_ports():
    ports = free_ports(5)
    assert len(set(ports)) == 5
    cluster = distributed.local_cluster(
        "parameter_server", workers=2, parameter_servers=2, ports=ports
    )
    sizes = {job: len(hosts) for job, hosts in cluster.items()}
    assert sizes == {"chief": 1, "worker": 2, "ps": 2}
    used = sorted(int(host.split(":")[1]) for hosts in cluster.values() for host in hosts)
    assert used == sorted(ports)
    workers = distributed.local_cluster(
        "multi_worker", workers=3, parameter_servers=9, ports=ports[:3]
    )
    assert list(workers) == ["worker"]


def test_a_job_too_big_for_this_machine_is_refused():
    capacity = distributed.local_capacity()
    assert 1 <= capacity <= (os.cpu_count() or 1) * distributed.TASKS_PER_CORE
    distributed.check_local_capacity("multi_worker", workers=capacity, parameter_servers=1)
    with pytest.raises(distributed.DistributeError, match=f"can host at most {capacity}"):
        distributed.check_local_capacity("multi_worker", workers=capacity + 1, parameter_servers=1)
    with pytest.raises(distributed.DistributeError, match="needs"):
        distributed.check_local_capacity("parameter_server", workers=capacity, parameter_servers=1)


# --- sharding and weights --------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
def test_partitioner_splits_the_table_only(shards):
    import tensorflow as tf

    partitioner = distributed.embedding_partitioner(rows=2000, columns=16, shards=shards)
    assert partitioner(tf.TensorShape([2000, 16]), tf.float32) == [shards, 1]
    assert partitioner(tf.TensorShape([16, 64]), tf.float32) == [1, 1]  # an LSTM kernel
    assert partitioner(tf.TensorShape([64]), tf.float32) == [1]
    with pytest.raises(distributed.DistributeError, match="cannot split 2 embedding rows"):
        distributed.embedding_partitioner(rows=2, columns=16, shards=3)


def test_full_weights_joins_shards_in_order():
    table = np.arange(24, dtype=np.float32).reshape(6, 4)
    bias = np.ones(3, dtype=np.float32)
    sharded = SimpleNamespace(get_weights=lambda: [table[:3], table[3:5], table[5:], bias])
    reference = SimpleNamespace(
        weights=[SimpleNamespace(name="t", shape=(6, 4)), SimpleNamespace(name="b", shape=(3,))]
    )
    joined = distributed.full_weights(sharded, reference)
    np.testing.assert_array_equal(joined[0], table)
    np.testing.assert_array_equal(joined[1], bias)
    wrong = SimpleNamespace(get_weights=lambda: [table[:, :2], table[:, 2:], bias])
    with pytest.raises(ValueError, match="does not fit"):
        distributed.full_weights(wrong, reference)


def test_weights_digest_sees_any_change():
    weights = [np.zeros((3, 2), np.float32), np.ones(2, np.float32)]
    same = [w.copy() for w in weights]
    assert distributed.weights_digest(weights) == distributed.weights_digest(same)
    same[1][0] = np.nextafter(np.float32(1), np.float32(2))
    assert distributed.weights_digest(weights) != distributed.weights_digest(same)


# --- the launcher, with real child processes ------------------------------------------------


def python_task(name: str, code: str, **kwargs) -> launcher.Task:
    return launcher.Task(name=name, argv=[sys.executable, "-c", textwrap.dedent(code)], **kwargs)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a parent that is not us) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_job_streams_prefixed_logs_and_succeeds(tmp_path, caplog):
    caplog.set_level("INFO", logger="maas.training.launcher")
    tasks = [
        python_task("worker-0", "import os; print('hi', os.environ['ROLE'])", env={"ROLE": "0"}),
        python_task("worker-1", "print('one'); print('two')"),
    ]
    launcher.run_job(tasks, log_dir=tmp_path, timeout_s=30, startup_timeout_s=30)
    assert (tmp_path / "worker-0.log").read_text() == "hi 0\n"
    assert (tmp_path / "worker-1.log").read_text() == "one\ntwo\n"
    assert "[worker-1] two" in caplog.text
    assert set(json.loads((tmp_path / "tasks.json").read_text())) == {"worker-0", "worker-1"}


def test_a_dead_task_stops_the_job_fast(tmp_path):
    sleeper = python_task("worker-0", "import time; time.sleep(120)")
    dying = python_task("worker-1", "import sys; print('about to fail'); sys.exit(3)")
    job = launcher.LocalJob([sleeper, dying], log_dir=tmp_path, timeout_s=60, startup_timeout_s=60)
    start = time.monotonic()
    job.start()
    with pytest.raises(launcher.TaskFailed, match="worker-1 exited with status 3") as failure:
        job.wait()
    assert time.monotonic() - start < 20
    assert "about to fail" in str(failure.value)
    assert not alive(job.pids["worker-0"])


def test_a_killed_task_is_reported_by_signal(tmp_path):
    code = "import os, signal, time; time.sleep(0.5); os.kill(os.getpid(), signal.SIGKILL)"
    tasks = [python_task("worker-0", "import time; time.sleep(120)"), python_task("w-1", code)]
    with pytest.raises(launcher.TaskFailed, match="w-1 was killed by SIGKILL"):
        launcher.run_job(tasks, log_dir=tmp_path, timeout_s=60, startup_timeout_s=60)


def test_no_hang_when_the_job_never_starts_or_never_ends(tmp_path):
    hang = python_task("worker-0", "import time; time.sleep(120)")
    job = launcher.LocalJob(
        [hang], log_dir=tmp_path, timeout_s=60, startup_timeout_s=1, ready=lambda: False
    )
    job.start()
    with pytest.raises(launcher.JobTimeout, match="did not start within 1 s"):
        job.wait()
    assert not alive(job.pids["worker-0"])
    with pytest.raises(launcher.JobTimeout, match="did not finish within 2 s"):
        launcher.run_job([hang], log_dir=tmp_path, timeout_s=2, startup_timeout_s=1)


def test_services_start_first_and_are_stopped_with_their_children(tmp_path):
    port = free_port()
    server = f"""
        import socket, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("grandchild", child.pid, flush=True)
        time.sleep(0.5)  # the main task must wait for the port, not start now
        sock = socket.socket(); sock.bind(("localhost", {port})); sock.listen()
        time.sleep(120)
    """
    main = f"import socket; socket.create_connection(('localhost', {port})); print('connected')"
    job = launcher.LocalJob(
        [python_task("ps-0", server, service=True, port=port), python_task("chief-0", main)],
        log_dir=tmp_path,
        timeout_s=60,
        startup_timeout_s=30,
    )
    job.start()
    job.wait()
    assert (tmp_path / "chief-0.log").read_text() == "connected\n"
    grandchild = int((tmp_path / "ps-0.log").read_text().split()[1])
    assert not alive(job.pids["ps-0"]) and not alive(grandchild)


def test_a_service_that_ends_early_fails_the_job(tmp_path):
    tasks = [
        python_task("ps-0", "print('bye')", service=True),
        python_task("chief-0", "import time; time.sleep(120)"),
    ]
    with pytest.raises(launcher.TaskFailed, match="ps-0 stopped before the job ended"):
        launcher.run_job(tasks, log_dir=tmp_path, timeout_s=60, startup_timeout_s=60)


# --- the command line: bad input is refused before anything starts --------------------------


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(small_params_dict()))
    return path


@pytest.fixture
def nothing_may_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(launcher.LocalJob, "start", refuse)


def test_unknown_strategy_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--strategy", "ring"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'ring'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "4096"], "can host at most"),
        (["--strategy", "mirrored", "--workers", "2"], "--workers applies to"),
        (["--parameter-servers", "2", "--replicas", "2"], "--replicas applies to mirrored"),
        (["--workers", "0"], "train.distribute.workers: must be >= 1"),
        (["--engine", "ray", "--strategy", "mirrored"], "with engine ray"),
        (["--engine", "local", "--address", "127.0.0.1:9"], "--address applies to --engine"),
        (["--engine", "ray", "--address", "127.0.0.1:9"], "cannot reach the Ray cluster at"),
        (["--engine", "ray", "--address", "nowhere"], "expected host:port"),
    ],
)
def test_impossible_jobs_are_refused(params_file, nothing_may_start, caplog, argv, message):
    assert cli.main(["train", "--params-file", str(params_file), *argv]) == 2
    assert message in caplog.text
    assert not (params_file.parent / "models").exists()


def test_a_task_with_malformed_tf_config_starts_nothing(params_file, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost"]}}')
    with pytest.raises(distributed.DistributeError, match="not a 'host:port'"):
        training_cli.run_task(
            SimpleNamespace(job_file=None, params_file=params_file, task_dir=None)
        )
    monkeypatch.setenv("TF_CONFIG", "not json")
    assert cli.main(["train", "--task", "--params-file", str(params_file)]) == 2


def test_the_launched_tasks_get_their_own_tf_config(tmp_path):
    from maas import config
    from maas.training import job

    raw = small_params_dict()
    raw["train"]["distribute"].update(strategy="parameter_server", workers=2, parameter_servers=3)
    params = config.parse_section(config.TrainParams, raw["train"], name="train")
    tasks, chief = job.local_tasks(params, tmp_path / "job.json", tmp_path)
    assert chief == "chief-0"
    assert [t.name for t in tasks] == ["chief-0", "worker-0", "worker-1", "ps-0", "ps-1", "ps-2"]
    configs = [distributed.parse_tf_config(t.env["TF_CONFIG"]) for t in tasks]
    assert {c.name for c in configs} == {t.name for t in tasks}
    assert all(c.cluster == configs[0].cluster for c in configs)
    assert [t.service for t in tasks] == [False, True, True, True, True, True]
    assert all(t.port for t in tasks if t.service)
    assert all("--task" in t.argv for t in tasks)


def test_signal_names_in_exit_descriptions():
    assert launcher.describe_exit(-int(signal.SIGKILL)) == "was killed by SIGKILL"
    assert launcher.describe_exit(2) == "exited with status 2"
