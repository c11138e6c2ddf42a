"""The lowest numpy and wandb that pyproject.toml admits really run the code that needs them: both are
installed (with what they require) into a folder that shadows this environment's copies, and a
script uses np.trapezoid (numpy 2) and an offline W&B run with reinit="finish_previous" (0.19.10)."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = """
import os, sys, tempfile
import numpy, wandb
print(numpy.__version__, wandb.__version__)
assert numpy.__file__.startswith(sys.argv[1]) and wandb.__file__.startswith(sys.argv[1])
from rnncodec.codec.metrics import rd_auc
assert abs(rd_auc([0.125, 1.0, 2.0], [0.5, 0.8, 0.9]) - 1.41875) < 1e-9
from rnncodec.sweeps.wandb_logging import TrialLogger, check_version
check_version()
folder = tempfile.mkdtemp()
for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ[var] = folder
logger = TrialLogger({"mode": "offline", "dir": folder, "project": "p", "entity": None, "group": "g"}, "floor-1",
                     "floor", {"a": {"b": 1}})
assert logger.run is not None, "W&B did not start"
logger.log({"epoch": 1, "val/psnr": 20.0}, step=1)
logger.finish()
print("ok")
"""


def _floor(requirement: str) -> str:
    name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[.*\])?>=([0-9.]+).*", requirement).groups()
    return f"{name}=={version}.*" if version.count(".") == 1 else f"{name}=={version}"


def test_numpy_and_wandb_floors_run_the_code_that_needs_them(tmp_path):
    if os.environ.get("RNNCODEC_OFFLINE"):
        pytest.skip("RNNCODEC_OFFLINE is set: no package index to install the floors from")
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = [_floor(r) for r in requirements if r.startswith(("numpy", "wandb"))]
    assert len(floors) == 2, requirements
    target = tmp_path / "floors"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), *floors],
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, "-c", SMOKE, str(target)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr[-3000:]
    numpy_version, wandb_version = out.stdout.split()[:2]
    assert numpy_version.startswith("2.0.") and wandb_version == "0.19.10"
