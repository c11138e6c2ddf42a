"""The files of ``cluster/``: the Ray cluster launcher YAMLs against the schema Ray ships (and Ray's own
config checks), the KubeRay manifests and their image structurally. Each installs this version of
rnncodec on the Ray this project runs, keeps token authentication on, opens no Ray port beyond the
cluster, and takes secrets from files or Kubernetes Secrets, never from itself."""

import copy
import importlib.util
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

from rnncodec.sweeps.cli import build_parser
from rnncodec.sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
WHEEL = f"rnncodec-{VERSION}-py3-none-any.whl"
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
RAY = next(r.split("==")[1] for r in EXTRAS["cluster"] if r.startswith("ray[default]=="))  # the cluster's Ray
RAY_IMAGE = f"rayproject/ray:{RAY}-py311-gpu"
IMAGE = f"rnncodec:{VERSION}-ray{RAY}-py311-gpu"  # cluster/kuberay/Dockerfile, FROM RAY_IMAGE
LAUNCHERS = ("aws.yaml", "gcp.yaml")
MANIFESTS = ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml")
KEY_FILE = "~/.config/rnncodec/wandb_api_key"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def ray_schema() -> dict:
    (ray_dir,) = importlib.util.find_spec("ray").submodule_search_locations
    return json.loads((Path(ray_dir) / "autoscaler" / "ray-schema.json").read_text())


def test_every_yaml_in_cluster_is_checked_here():
    found = {p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob("*.y*ml")}
    assert found == {*LAUNCHERS, *MANIFESTS}


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_files_pass_rays_schema_and_config_checks(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(name)
    jsonschema.validate(config, ray_schema())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` does before it starts anything


def test_the_schema_check_catches_mistakes():
    config = load("aws.yaml")
    for broken in ({**config, "setup_comands": []},
                   {**config, "available_node_types": {"head": {"node_config": {}}}},
                   {**config, "file_mounts": ["~/.ray/auth_token"]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, ray_schema())


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launchers_install_this_version_on_our_ray_with_token_auth_and_no_open_ports(name):
    config, text = load(name), (CLUSTER / name).read_text()
    assert config["docker"]["image"] == RAY_IMAGE
    assert config["file_mounts"][f"~/{WHEEL}"] == f"./dist/{WHEEL}"
    assert f'pip install --quiet "$HOME/{WHEEL}[cluster]"' in config["setup_commands"]
    # the token and the W&B key come from files copied from the launching machine, never from here
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert config["file_mounts"][KEY_FILE] == KEY_FILE
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert "export RAY_AUTH_MODE=token " in command
        assert f'WANDB_API_KEY="$(cat {KEY_FILE})"' in command
    assert not re.search(r"\b[0-9a-f]{40}\b", text), "something like a W&B key is written in the file"
    # the dashboard on the head's loopback (`ray dashboard` forwards it); no rule opens a Ray port to all
    assert "--dashboard-host=127.0.0.1" in config["head_start_ray_commands"][-1]
    assert "0.0.0.0" not in text and "security_group" not in config["provider"]
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials never run on the head
    (gpu,) = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= config["max_workers"]
    node = gpu["node_config"]
    assert node.get("InstanceType", "").startswith("g") or node.get("guestAccelerators")


def containers(cluster: dict) -> list[dict]:
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_raycluster_runs_our_image_on_gpu_workers_with_token_auth_and_secrets():
    cluster = load("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == RAY
    assert spec["authOptions"] == {"mode": "token", "secretName": "rnncodec-ray-token"}
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # no LoadBalancer or NodePort: port-forward
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for container in containers(cluster):
        assert container["image"].endswith(IMAGE)
        env = {e["name"]: e for e in container["env"]}
        assert env["WANDB_API_KEY"] == {"name": "WANDB_API_KEY",
                                        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}}
        assert not {"RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY"} & set(env)
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (gpu,) = spec["workerGroupSpecs"]
    (worker,) = gpu["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert worker["resources"]["limits"] == worker["resources"]["requests"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["maxReplicas"] >= 1


def test_the_image_is_built_on_our_ray_with_this_version_and_the_sweep_files():
    dockerfile = (CLUSTER / "kuberay" / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(RAY_IMAGE)}$", dockerfile, re.MULTILINE)
    assert f'pip install --no-cache-dir "/tmp/{WHEEL}[cluster]"' in dockerfile
    assert "COPY --chown=ray:users sweeps/*.yaml /home/ray/sweeps/" in dockerfile
    assert f"-t $REGISTRY/{IMAGE} ." in dockerfile


def test_rayjob_runs_a_valid_rnncodec_sweep_on_the_raycluster_with_s3_storage():
    job, cluster = load("kuberay/rayjob.yaml"), load("kuberay/raycluster.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "rnncodec"
    args = build_parser().parse_args(argv[1:])  # the real command line accepts it
    assert (args.command, args.sweep_command) == ("sweep", "run")
    assert args.storage.startswith("s3://") and args.address is None  # the job's RAY_ADDRESS is used
    spec = Path(args.spec)
    assert spec.parent == Path("/home/ray/sweeps")  # where the image copies sweeps/*.yaml
    assert load_spec(ROOT / "sweeps" / spec.name).name == "paper"
