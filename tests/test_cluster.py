"""Sweeps on a Ray cluster of several nodes on this machine, sharing no disk: S3 storage, lost nodes,
a killed driver, GPU packing and token authentication.

One cluster serves the module (``ray.cluster_utils.Cluster``: a head without CPUs, so every trial runs
on a worker node, with the dashboard for job submission, and three one-CPU workers), every node with
its own data cache, and one S3 server (moto, on loopback) holds the sweeps and the prepared data. Token
authentication is on: every process gets ``RAY_AUTH_MODE=token`` and a token file through
``RAY_AUTH_TOKEN_PATH``, the way Ray documents. Drivers are ``rnncodec sweep run|resume`` subprocesses
joining with ``--address`` or ``RAY_ADDRESS``, or Ray jobs (``ray job submit``). Every wait has a
deadline, and only what this module started is stopped: its nodes through the cluster object, its
processes by id.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from ray._private.authentication_test_utils import reset_auth_token_state
from ray._private.utils import get_ray_address_file
from ray.cluster_utils import Cluster

from rnncodec.data.errors import DataError, RnncodecError
from rnncodec.data.preparation import prepare
from rnncodec.data.remote import fetch, open_filesystem, publish
from rnncodec.data.shards import read_manifest, verify
from rnncodec.sweeps.results import collect
from rnncodec.sweeps.storage import child, parent

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "rnncodec"
DRIVER_TIMEOUT_S = 240
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, every: float = 0.25):
    """``check()``'s first truthy value, polled until ``timeout`` seconds have passed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on a free loopback port, with one bucket; stopped by its process id."""
    port, log = free_port(), tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        def answers():
            assert server.poll() is None, f"the moto server exited (moto[server] installed?): {log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return True
            except OSError:
                return False

        wait_for("moto server", answers, 30)
        pafs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=f"127.0.0.1:{port}",
                          scheme="http", allow_bucket_creation=True).create_dir(BUCKET)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@dataclass
class Site:
    """The module's cluster: its address, token, storage URI, and each node's own data cache."""

    cluster: Cluster
    address: str
    token: str
    storage: str
    home: Path
    caches: dict[str, Path] = field(default_factory=dict)
    nodes: dict[str, object] = field(default_factory=dict)

    def add_node(self, name: str, **resources):
        """A worker node with ``resources`` whose processes cache data in their own folder."""
        cache = self.home / f"cache-{name}"
        os.environ["RNNCODEC_CACHE"] = str(cache)  # the node's processes inherit it: its own "disk"
        try:
            node = self.cluster.add_node(**resources)
        finally:
            os.environ["RNNCODEC_CACHE"] = str(self.home / "cache-driver")
        self.caches[node.node_id], self.nodes[node.node_id] = cache, node
        return node


@pytest.fixture(scope="module")
def site(tmp_path_factory, s3_endpoint):
    home = tmp_path_factory.mktemp("cluster")
    saved = dict(os.environ)
    address_file = Path(get_ray_address_file(None))
    saved_address = address_file.read_text() if address_file.exists() else None
    token = secrets.token_hex(32)
    (home / "token").write_text(token)
    (home / "token").chmod(0o600)
    os.environ.update({
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(home / "token"), **S3_ENV,
        "WANDB_MODE": "offline", "WANDB_DIR": str(home / "wandb"),
        "WANDB_CACHE_DIR": str(home / "wandb"), "WANDB_CONFIG_DIR": str(home / "wandb"),
        "WANDB_DATA_DIR": str(home / "wandb"), "RNNCODEC_CACHE": str(home / "cache-driver"),
    })
    os.environ.pop("RAY_ADDRESS", None)
    reset_auth_token_state()  # this process's Ray read RAY_AUTH_MODE when imported: read it again
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True,
                                                                "dashboard_port": free_port()})
        site = Site(cluster, cluster.address, token,
                    f"s3://{BUCKET}/sweeps?endpoint_override={s3_endpoint}&scheme=http", home)
        for name in ("a", "b", "c"):
            site.add_node(name, num_cpus=1)
        cluster.wait_for_nodes()
        yield site
    finally:
        if cluster is not None:
            cluster.shutdown()
        if saved_address is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(saved_address)
        os.environ.clear()
        os.environ.update(saved)
        reset_auth_token_state()


def sweep_file(site: Site, tmp_path: Path, name: str, **changes) -> Path:
    raw = {
        "name": name,
        "data": {"source": "sample", "size": 256},
        "fixed": {"epochs": 3, "steps_per_epoch": 20, "width": 0.125, "val_size": 8, "iterations": 2},
        "axes": {"batch_size": [8, 16]},
        "resources": {"cpus": 1},
        "storage": site.storage,
        "wandb": {"mode": "disabled"},
        "max_failures": 2,
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


SWEEP = [sys.executable, "-m", "rnncodec.sweeps.cli", "sweep"]


class Driver:
    """A command (``rnncodec sweep …`` by default) in its own process group, its output in a log file."""

    def __init__(self, site: Site, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                 command: tuple[str, ...] = tuple(SWEEP)) -> None:
        self.site, self.log = site, tmp_path / f"driver-{time.time_ns()}.log"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen([*command, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, env={**os.environ, **(env or {})})

    def output(self) -> str:
        text = self.log.read_text()
        assert self.site.token not in text, "the driver printed the Ray token"
        return text

    def alive(self) -> bool:
        assert self.process.poll() is None, self.output()
        return True

    def wait(self, timeout: float = DRIVER_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the driver did not finish within {timeout} s:\n{self.output()[-4000:]}")
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the driver and what it started itself, nothing else
            self.process.wait()


def progress(where: str) -> list[dict]:
    try:
        return collect(where)[1]
    except Exception:  # noqa: BLE001 - not written yet
        return []


def epochs_of(trial) -> list[int]:
    return [h["epoch"] for h in trial["history"]]


def test_trials_spread_over_nodes_and_a_lost_node_costs_at_most_its_epoch(site, tmp_path):
    """Two trials on two nodes; the node of one is killed while that trial is in its second epoch. It
    continues from its epoch-1 checkpoint (on S3) on another node, and every epoch is accounted for."""
    where = child(site.storage, "lost-node")
    spec = sweep_file(site, tmp_path, "lost-node", wandb={"mode": "offline", "images_every": 0},
                      fixed={"epochs": 3, "steps_per_epoch": 40, "width": 0.125, "val_size": 8, "iterations": 2})
    driver = Driver(site, tmp_path, "run", str(spec), "--address", site.address)
    try:
        def checkpointed():
            driver.alive()
            done = [t for t in progress(where) if t["history"] and t["status"] == "RUNNING"]
            return done[0] if done else None

        victim = wait_for("a first checkpoint", checkpointed, 150)
        lost = victim["history"][-1]["node_id"]
        site.cluster.remove_node(site.nodes.pop(lost), allow_graceful=False)
        assert driver.wait() == 0, driver.output()[-4000:]
    finally:
        driver.kill()
    _, trials = collect(where)
    assert len(trials) == 2 and all(t["status"] == "TERMINATED" for t in trials)
    for t in trials:
        assert epochs_of(t) == [1, 2, 3]  # each epoch reported once, from the history the checkpoints carry
    (hit,) = [t for t in trials if t["trial"] == victim["trial"]]
    on_lost = [h for h in hit["history"] if h["node_id"] == lost]
    after = hit["history"][len(on_lost):]
    assert hit["failures"] >= 1 and on_lost and after
    assert [h["epoch"] for h in on_lost] == list(range(1, len(on_lost) + 1))
    # continued on another node from the last epoch the lost node finished: at most that epoch is repeated
    assert all(h["node_id"] != lost and h["resumed_from_epoch"] == len(on_lost) for h in after)
    nodes = {h["node_id"] for t in trials for h in t["history"]}
    assert len(nodes) >= 2 and nodes <= set(site.caches)  # spread over worker nodes; none on the CPU-less head
    assert all(h["node_ip"] and h["device"] == "cpu" for t in trials for h in t["history"])
    # the data was prepared once (by the driver) into the bucket; each node copied and verified it
    fs, root = pafs.FileSystem.from_uri(where)
    assert fs.get_file_info(f"{root}/data/manifest.json").type == pafs.FileType.File
    for node in nodes:
        cache = site.caches[node]
        assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == ["remote"]
        (copy,) = [p for p in (cache / "remote").iterdir() if not p.name.startswith(".")]
        verify(copy, read_manifest(copy))  # sizes and sha256 against the manifest
    assert "copying the prepared data to s3://" in driver.output()


def test_a_killed_driver_is_resumed_from_s3_by_a_ray_job(site, tmp_path):
    """The driver is killed; `ray job submit -- rnncodec sweep resume s3://…` finishes the sweep, its
    driver on the head joining through RAY_ADDRESS, every trial from its checkpoints."""
    where = child(site.storage, "killed-driver")
    spec = sweep_file(site, tmp_path, "killed-driver", fixed={"epochs": 3, "steps_per_epoch": 30, "width": 0.125,
                                                             "val_size": 8, "iterations": 2})
    driver = Driver(site, tmp_path, "run", str(spec), "--address", site.address)
    try:
        wait_for("checkpoints of both trials", lambda: driver.alive() and (
            len(t := progress(where)) == 2 and all(x["epoch"] >= 1 for x in t)), 150)
    finally:
        driver.kill()

    seen: list[dict] = [{}]

    def settled():  # the trials die with their driver; wait until their checkpoints stop changing
        seen.append({t["trial"]: t["history"] for t in progress(where)})
        return seen[-1] if seen[-1] == seen[-2] else None

    at_kill = wait_for("checkpoints to settle", settled, 60, every=2)
    assert any(len(h) < 3 for h in at_kill.values()), "the trials finished before the kill; lengthen them"
    # No --working-dir: this machine's nodes share one runtime_resources folder, where a worker node's
    # clean-up would delete the driver's working folder under it (real nodes have disks of their own).
    resumed = Driver(site, tmp_path, "--address", f"http://{site.cluster.webui_url}", "--", *SWEEP, "resume", where,
                     command=(sys.executable, "-m", "ray.scripts.scripts", "job", "submit"))
    assert resumed.wait() == 0, resumed.output()[-4000:]
    assert "sweep killed-driver: 2/2 trials finished" in resumed.output()
    _, trials = collect(where)
    for t in trials:
        assert t["status"] == "TERMINATED" and epochs_of(t) == [1, 2, 3]
        before = at_kill[t["trial"]]
        assert before and t["history"][: len(before)] == before  # kept, not retrained from epoch 0
        assert all(h["resumed_from_epoch"] >= 1 for h in t["history"][len(before):])
    status = subprocess.run([*SWEEP, "status", where], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert status.returncode == 0 and status.stdout.count("TERMINATED") == 2, status.stderr


def test_four_quarter_gpu_trials_share_one_declared_gpu(site, tmp_path):
    """A node that declares one GPU (this machine has none) runs four ``gpus: 0.25`` trials at once; each
    is handed the GPU through CUDA_VISIBLE_DEVICES and, finding no CUDA, trains on the CPU with a warning."""
    gpu_node = site.add_node("gpu", num_cpus=4, num_gpus=1)
    try:
        spec = sweep_file(site, tmp_path, "quarters", axes={"batch_size": [8, 16, 24, 32]},
                          fixed={"epochs": 1, "steps_per_epoch": 60, "width": 0.125, "val_size": 8, "iterations": 2},
                          resources={"cpus": 1, "gpus": 0.25}, concurrency=4)
        # joins through RAY_ADDRESS, as a driver started by `ray job submit` does
        driver = Driver(site, tmp_path, "run", str(spec), env={"RAY_ADDRESS": site.address})
        assert driver.wait() == 0, driver.output()[-4000:]
    finally:
        site.nodes.pop(gpu_node.node_id)
        site.cluster.remove_node(gpu_node)
    _, trials = collect(child(site.storage, "quarters"))
    assert len(trials) == 4 and all(t["status"] == "TERMINATED" and epochs_of(t) == [1] for t in trials)
    history = [h for t in trials for h in t["history"]]
    assert {h["node_id"] for h in history} == {gpu_node.node_id}  # only that node has GPUs
    assert all(h["cuda_visible_devices"] == "0" and h["device"] == "cpu" for h in history)
    # all four held their quarter at the same time: each had started (setup counted: opening the data is
    # part of a trial, and a loaded machine delays some trials' first steps) before any had finished
    last_start = max(t["history"][0]["first_step_at"] - t["history"][0]["setup_time"] for t in trials)
    first_end = min(t["history"][-1]["epoch_end_at"] for t in trials)
    assert last_start < first_end, f"the last trial started {last_start - first_end:.1f} s after the first ended"
    assert "but CUDA is not available here; training on the CPU" in driver.output()


def test_unreachable_storage_is_refused_in_one_line(site, tmp_path):
    """An S3 endpoint that accepts connections and never answers: refused within the storage time limit."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        storage = f"s3://{BUCKET}/sweeps?endpoint_override=127.0.0.1:{silent.getsockname()[1]}&scheme=http"
        run = subprocess.run([*SWEEP, "run", str(sweep_file(site, tmp_path, "nowhere")), "--storage", storage],
                             capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env={**os.environ, "RNNCODEC_STORAGE_TIMEOUT": "2"})
    errors = [line for line in run.stderr.splitlines() if line.startswith("rnncodec: error:")]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert len(errors) == 1 and "did not answer within 2 s" in errors[0]


def test_a_wrong_token_is_refused_in_one_line(site, tmp_path):
    (tmp_path / "wrong").write_text(secrets.token_hex(32))
    driver = Driver(site, tmp_path, "run", str(sweep_file(site, tmp_path, "wrong-token")), "--address", site.address,
                    env={"RAY_AUTH_TOKEN_PATH": str(tmp_path / "wrong"), "RAY_gcs_server_port_wait_time_s": "2"})
    assert driver.wait(120) == 2
    text = driver.output()
    errors = [line for line in text.splitlines() if line.startswith("rnncodec: error:")]
    assert "Traceback" not in text and len(errors) == 1 and "authentication token" in errors[0], text


# --------------------------------------------------------------------------- storage URIs and shared data, no Ray


def test_uris_keep_their_options_when_joined():
    storage = "s3://bucket/sweeps?endpoint_override=127.0.0.1:9000&scheme=http"
    sweep = child(storage, "demo")
    assert sweep == "s3://bucket/sweeps/demo?endpoint_override=127.0.0.1:9000&scheme=http"
    assert parent(sweep) == storage and parent(child("/tmp/x", "y")) == str(Path("/tmp/x").resolve())


def test_a_secret_key_in_a_storage_uri_is_refused_unprinted():
    with pytest.raises(RnncodecError) as refused:
        open_filesystem("s3://AKIAEXAMPLE:s3cr3t-key@bucket/sweeps")
    assert "s3cr3t" not in str(refused.value) and "environment" in str(refused.value)


def test_published_data_is_fetched_verified_and_published_once(s3_endpoint, tmp_path, monkeypatch):
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    folder = prepare("sample", size=64, cache_dir=tmp_path / "prepared")
    uri = f"s3://{BUCKET}/published?endpoint_override={s3_endpoint}&scheme=http"
    assert publish(folder, uri) == uri
    fs, root = pafs.FileSystem.from_uri(uri)
    assert {i.base_name for i in fs.get_file_info(pafs.FileSelector(root))} == {p.name for p in folder.iterdir()}
    copy = fetch(uri, tmp_path / "node-a")  # what each node does, into its own cache
    assert copy.parent == tmp_path / "node-a" / "remote"
    verify(copy, read_manifest(copy))
    assert all((copy / p.name).read_bytes() == p.read_bytes() for p in folder.iterdir())
    # a second publish of the same manifest copies nothing (here: leaves an altered shard altered) ...
    shard = read_manifest(folder)["splits"]["train"]["shards"][0]["file"]
    with fs.open_output_stream(f"{root}/{shard}") as out:
        out.write(bytes(len((folder / shard).read_bytes())))
    publish(folder, uri)
    # ... and a node copying it finds the shard's sha256 wrong and keeps nothing
    with pytest.raises(DataError, match="does not match its manifest"):
        fetch(uri, tmp_path / "node-b")
