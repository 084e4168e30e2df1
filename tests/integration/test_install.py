"""A non-editable install into a fresh environment has the commands and the recipes, and runs the demo,
with nothing of the checkout on the path.

The environment is a new venv whose only link to this one is a path line to the current interpreter's
site-packages (so torch is not installed again); that folder's own .pth files (an editable install of
this checkout among them) are not read. The package is built from a copy of the sources in tmp_path.
"""
import os
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

from train_helpers import ROOT


def _run(cmd, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "t2t"), src / "t2t", ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).strip()
    here = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    with open(os.path.join(purelib, "host-packages.pth"), "w") as f:  # torch, timm, setuptools of this interpreter
        f.write("\n".join(dict.fromkeys(here)) + "\n")
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", str(src)],
         tmp)
    shutil.rmtree(src)  # nothing of the sources is left to import from
    return tmp, venv / "bin"


def test_the_installed_package_is_the_one_imported(installed):
    tmp, bin_dir = installed
    where = _run([str(bin_dir / "python"), "-c", "import t2t; print(t2t.__file__)"], tmp).strip()
    assert where.startswith(str(tmp / "venv")) and not where.startswith(ROOT), where
    for tool in ("train", "validate", "predict", "export", "benchmark", "visualize", "plot"):
        assert (bin_dir / f"t2t-{tool}").is_file()


def test_print_config_of_a_recipe_by_name(installed):
    tmp, bin_dir = installed
    out = _run([str(bin_dir / "t2t-train"), "-c", "demo", "--print-config"], tmp)
    assert "model:" in out and "device: cpu" in out  # the demo recipe, shipped inside the package


def test_the_demo_trains_and_evaluates(installed):
    tmp, bin_dir = installed
    python = str(bin_dir / "python")
    _run([python, "-m", "t2t.tools.demo_data", "--out", "data", "--classes", "2", "--train-per-class", "8",
          "--val-per-class", "2", "--size", "32"], tmp)
    _run([str(bin_dir / "t2t-train"), "-c", "demo", "--data-dir", "data", "--output", "run", "train.epochs=1",
          "train.batch_size=8", "model.img_size=32", "data.workers=0", "sched.warmup_epochs=0",
          "sched.cooldown_epochs=0"], tmp)
    out = _run([str(bin_dir / "t2t-validate"), "-c", "run/config.yaml", "--checkpoint", "run/best.pth",
                "--data-dir", "data", "--workers", "0"], tmp)
    assert "top-1" in out or "top1" in out, out
