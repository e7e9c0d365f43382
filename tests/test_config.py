"""Bad configs fail before any compile with an error naming the field and what is allowed."""
import os
import subprocess
import sys

import pytest

from common import train
from common.errors import ConfigError
from configs.common import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  config = base_config("dense")
  config.update(overrides)
  return config


@pytest.mark.parametrize("overrides, field, says", [
    (dict(dataset="mnist-typo"), "dataset", "allowed: digits"),
    (dict(model="resnet"), "model", "allowed: softmax, mlp, logistic"),
    (dict(optimizer="lion"), "optimizer", "allowed: sgd"),
    (dict(num_steps=0), "num_steps", "positive integer"),
    (dict(batch_size=-8), "batch_size", "positive integer"),
    (dict(batch_size=100), "batch_size", "not divisible by 8 devices"),
    (dict(num_devices=64), "num_devices", "only 8 are available"),
    (dict(lr=0.0), "lr", "> 0"),
    (dict(dataset="svmlight:/no/such/file.svm"), "dataset", "does not exist"),
    (dict(model="logistic"), "model", "binary dataset"),
    (dict(model="mlp", widths=(64, 0)), "widths", "positive hidden widths"),
    (dict(test_fraction=1.5), "test_fraction", "(0, 1)"),
    (dict(dataset="synthetic", num_classes=0), "num_classes", "positive integer"),
])
def test_bad_field_is_named(overrides, field, says):
  with pytest.raises(ConfigError) as err:
    train.validate(_config(**overrides), available_devices=8)
  assert err.value.field == field
  assert f"config.{field}" in str(err.value) and says in str(err.value)


def test_unknown_algorithm_is_named():
  with pytest.raises(ConfigError, match=r"config.algorithm: unknown algorithm 'nope'; allowed: dense"):
    base_config("nope")


def test_unreadable_svmlight_file(tmp_path):
  path = tmp_path / "bad.svm"
  path.write_text("this is not :: svmlight\n")
  with pytest.raises(ConfigError, match="cannot read svmlight file"):
    train.validate(_config(dataset=f"svmlight:{path}"), available_devices=8)


def test_svmlight_file_is_loaded(tmp_path):
  from sklearn.datasets import dump_svmlight_file, load_breast_cancer
  d = load_breast_cancer()
  path = tmp_path / "bc.svm"
  dump_svmlight_file(d.data, d.target, str(path))
  dataset = train.validate(_config(dataset=f"svmlight:{path}", model="logistic"), available_devices=8)
  assert dataset.num_classes == 2 and dataset.num_features == 30
  assert dataset.num_train + len(dataset.y_test) == 569


def _launch(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)


def test_cli_bad_value_is_one_line_not_a_traceback():
  proc = _launch("--config.dataset=nope", "--workdir", "/tmp/never-written")
  assert proc.returncode != 0
  assert "error: config.dataset: unknown dataset 'nope'" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_cli_misspelt_field_fails_at_flag_parsing():
  proc = _launch("--config.learning_rate=0.1")
  assert proc.returncode != 0 and "learning_rate" in proc.stderr


def test_algorithm_override_rebuilds_algo_fields():
  from common import cli, fields
  config = base_config("dense")
  config.lock()
  said = []
  cli.apply_overrides(config, [("algo.rule", "wire"), ("algorithm", "sfb")], say=said.append)
  assert config.algorithm == "sfb" and config.algo.rule == "wire" and "gflops" in config.algo
  assert said and "config.algo rebuilt" in said[0]
  fields.check(config)


def test_algo_fields_of_another_algorithm_are_refused():
  config = base_config("dense")
  config.algorithm = "dho"     # set directly (API), so config.algo still holds dense's (no) fields
  with pytest.raises(ConfigError, match=r"config.algo: holds the fields of another algorithm"):
    train.validate(config, available_devices=8)


def test_config_overrides_split_from_flags():
  from common import cli
  rest, overrides = cli.split_config_args(
      ["launch.py", "--config", "x.py", "--config.lr=0.1", "--config.widths", "(8, 8)", "--noconfig.x64",
       "--config.use_bias", "--workdir", "w"])
  assert rest == ["launch.py", "--config", "x.py", "--workdir", "w"]
  assert overrides == [("lr", "0.1"), ("widths", "(8, 8)"), ("x64", "false"), ("use_bias", None)]


def test_first_progress_line_has_a_rate():
  from common.metrics import Chronometer
  chrono = Chronometer(10)
  chrono.add(0.5)
  assert chrono.rate() == 2.0 and chrono.eta_s(1) == 4.5
  chrono.add(0.1)
  chrono.add(0.1)
  assert abs(chrono.rate() - 10.0) < 1e-9   # steady: the first step's one-off cost is left out
