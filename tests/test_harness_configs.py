"""Every shipped config runs to the end as shipped, shortened to a few steps, with a workdir.

Each config file's default is run here (arguments in the slow test): the loop finishes with
status ok, writes one metrics line per step and a final checkpoint, and the resolved config
prints as ``field = value`` lines (no YAML tags such as ``!!python/tuple``).
"""
import glob
import importlib
import os

import pytest

from common import cli, train
from common.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith(("__init__.py", "common.py")))
ARGS = [("baseline_digits", "mlp"), ("dho_mlp_digits", "adam"), ("dho_mlp_digits", "base_hb"), ("dho2_mlp", "2"),
        ("sign1bit_digits", "const"), ("sign1bit_digits", "sgc"), ("sign1bit_digits", "ef"),
        ("sign1bit_digits", "mv,shuffled"), ("sign1bit_digits", "is_1bit"), ("vr_prox_breast_cancer", "tap"),
        ("vr_prox_breast_cancer", "prox_svrg"), ("vr_prox_breast_cancer", "dap_sgd"), ("vr_prox_digits", "tap"),
        ("vr_prox_digits", "faithful"),
        ("vr_prox_sparse", "tap"), ("vr_prox_sparse", "prox_svrg")]
STEPS = 3


def _runtime(name):
  return cli.load_config(os.path.join(ROOT, "configs", f"{name}.py")).get("runtime", "spmd")


# Ray configs start a local Ray node (~25 s before the first step): slow tier.
CONFIG_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if _runtime(n) == "ray" else n for n in CONFIGS]


def _run_shortened(tmp_path, name, arg=None):
  config = cli.load_config(os.path.join(ROOT, "configs", f"{name}.py") + (f":{arg}" if arg else ""))
  assert "!!" not in cli.format_config(config)
  config.num_steps = STEPS
  workdir = str(tmp_path / name)
  if config.get("runtime") == "ray":
    from common.async_ray import runtime as ray_runtime
    result = ray_runtime.run(config, workdir, quiet=True)
  else:
    result = train.run(config, workdir, quiet=True)
  assert result.status == "ok" and result.step == STEPS
  assert [row["step"] for row in read_metrics(workdir)] == list(range(1, STEPS + 1))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(STEPS)))
  assert all(v is None or v == v for v in result.final.values() if isinstance(v, float))


def test_every_config_file_is_covered():
  assert len(CONFIGS) >= 13 and {"default", "dho2_v2", "sfb_mlp"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIG_PARAMS)
def test_config_runs_as_shipped(tmp_path, name):
  _run_shortened(tmp_path, name)


@pytest.mark.slow
@pytest.mark.parametrize("name,arg", ARGS)
def test_config_argument_runs_as_shipped(tmp_path, name, arg):
  _run_shortened(tmp_path, name, arg)


def test_resolved_config_prints_as_python_literals():
  config = importlib.import_module("configs.default").get_config()
  text = cli.format_config(config)
  assert "widths           = (64,)" in text and "!!python" not in text
