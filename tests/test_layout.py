"""The package's shape: one namespace that a user's own files cannot shadow, imports that point one
way, a command line that answers without loading torch, and a wheel that installs ``rnncodec.*``."""

import ast
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"codec": "codec", "data": "data", "evaluation": "evaluation", "sweeps": "sweeps"}
# Which of our packages each package may import: data at the bottom, the command line and Ray on top.
ALLOWED = {"data": set(), "codec": {"data"}, "evaluation": {"codec", "data"},
           "sweeps": {"codec", "data", "evaluation"}}
HEAVY = ("torch", "ray", "wandb", "pyarrow", "numpy", "matplotlib", "PIL", "yaml")


def _modules() -> dict[str, Path]:
    return {f"rnncodec.{pkg}.{p.stem}" if p.stem != "__init__" else f"rnncodec.{pkg}": p
            for pkg, folder in PACKAGES.items() for p in sorted((ROOT / folder).glob("*.py"))}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_imports_point_one_way():
    for name, path in _modules().items():
        package = name.split(".")[1]
        ours = {i.split(".")[1] for i in _imports(path, top_level_only=False) if i.startswith("rnncodec.")}
        assert ours <= ALLOWED[package] | {package}, f"{name} imports {ours - ALLOWED[package] - {package}}"
        third = {i.split(".")[0] for i in _imports(path, top_level_only=False)}
        if package in ("codec", "data", "evaluation"):
            assert not third & {"ray", "wandb"}, f"{name} imports Ray or W&B"
        if package == "data" and not name.endswith(".loader"):
            assert "torch" not in third, f"{name} imports torch (only data/loader.py may)"


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {m: {i for i in _imports(p, top_level_only=True) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, "import cycle: " + " -> ".join([*stack, m, n])
            if n not in state:
                visit(n, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_no_bare_package_imports_anywhere():
    pattern = re.compile(r"^\s*(import|from) (codec|data|sweeps|evaluation)([. ]|$)", re.M)
    files = [p for d in ("codec", "data", "evaluation", "sweeps", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    assert files and not [str(p) for p in files if pattern.search(p.read_text())]


def _hostile(folder: Path) -> Path:
    for name in ("data.py", "codec.py", "sweeps.py", "evaluation.py"):
        (folder / name).write_text('raise ImportError("user file")\n')
    return folder


def test_the_namespace_imports_from_a_folder_with_hostile_files(tmp_path):
    code = ("import rnncodec.codec, rnncodec.data, rnncodec.sweeps, rnncodec.evaluation, rnncodec.data.reader; "
            "print(rnncodec.data.reader.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=_hostile(tmp_path), capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == (ROOT / "data" / "reader.py").resolve()


def test_help_and_refusals_load_nothing_heavy():
    code = f"""
import sys
from rnncodec.sweeps.cli import main
for argv in (["--help"], ["train", "--help"], ["sweep", "run", "--help"], ["eval", "--help"], ["data", "info", "--help"],
             ["compress", "in.png", "out", "--iterations", "17"], ["data", "info", "d", "--samples", "-1"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
    assert "must be in 1..16" in out.stderr and "must be a positive finite number" in out.stderr


def test_the_license_file_matches_the_project_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    if built.returncode != 0 and "network" in built.stderr.lower():
        pytest.skip(f"cannot fetch the build backend: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("rnncodec-*.whl")
    return path


def test_the_wheel_installs_everything_under_rnncodec(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("rnncodec-")}
    assert tops == {"rnncodec"}, tops
    for required in ("rnncodec/codec/model.py", "rnncodec/codec/pretrained/lstm-additive-w025.pt",
                     "rnncodec/sweeps/demo.yaml", "rnncodec/sweeps/cli.py", "rnncodec/data/reader.py",
                     "rnncodec/evaluation/rd.py"):
        assert required in names, required
    assert not any(n.startswith("rnncodec/__init__") for n in names)  # a namespace package
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    code = "import rnncodec.codec.options as o, rnncodec.sweeps.spec as s; print(o.__file__); print(s.load_spec.__module__)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path[:0] = [{str(target)!r}]; {code}"],
                         cwd=_hostile(tmp_path), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(target))
