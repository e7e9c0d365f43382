"""The four algorithm packages install with pip and import from outside the checkout.

A fresh virtual environment (seeing the already-installed jax/optax/flax through
``--system-site-packages``, so nothing is downloaded) gets ``pip install .`` and ``pip install -e .``
of a copy of this checkout; a Python started in an empty directory, with no ``PYTHONPATH``, then
imports each package and checks where it came from and that the harness is not importable.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import venv

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("sfb", "dho", "sign1bit", "vr_prox")

_PROBE = textwrap.dedent("""
    import importlib, json, sys
    out = {{}}
    for name in {packages!r}:
      module = importlib.import_module(name)
      out[name] = module.__file__
    try:
      import common  # the harness is not part of the distribution
      out["common"] = common.__file__
    except ImportError:
      out["common"] = None
    import jax, optax, sfb
    tx = sfb.scale_by_sfb(None)  # one call through each import chain, no device needed
    assert tx.init({{}}) is not None
    print(json.dumps(out))
""")


def _copy_checkout(dst):
  ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "runs", "workdirs",
                                  ".pytest_cache", "results")
  shutil.copytree(REPO, dst, ignore=ignore)
  return dst


def _make_env(path):
  venv.EnvBuilder(system_site_packages=True, with_pip=False, clear=True).create(path)
  return os.path.join(path, "bin", "python")


def _pip_install(python, *args):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_TARGET")}
  proc = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                         "--disable-pip-version-check", *args], capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


def _imports_from(python, cwd):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([python, "-c", _PROBE.format(packages=PACKAGES)], cwd=cwd, capture_output=True,
                        text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_pip_install_imports_outside_checkout(tmp_path, editable):
  src = _copy_checkout(str(tmp_path / "checkout"))
  python = _make_env(str(tmp_path / "env"))
  _pip_install(python, *(["-e", src] if editable else [src]))
  elsewhere = tmp_path / "user_project"
  elsewhere.mkdir()
  found = _imports_from(python, str(elsewhere))
  root = src if editable else str(tmp_path / "env")
  for name in PACKAGES:
    assert found[name].startswith(root + os.sep), (name, found[name])
  assert found["common"] is None, "the harness must not be installed as a top-level package"
