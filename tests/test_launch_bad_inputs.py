"""Bad command lines through ``launch.py`` (and the plot CLI).

Each must exit non-zero with exactly one ``error:`` line, as the last line, naming the flag or
field, and no traceback. Every case runs through ``launch.main`` in one batch process
(``tests/launch_batch.py``: flags reset and stdout/stderr captured per case, the cases refused
before JAX first); the cases in ``SUBPROCESS`` also run as their own ``python launch.py``
processes, three at a time, next to the batch. Cases marked ``FAST`` must be refused before JAX
is imported (the batch checks ``sys.modules``; their own processes take under ~2 s on 2 busy
cores, measured 0.5 s on an idle one), the others before anything compiles.
"""
import concurrent.futures
import json
import os
import subprocess
import sys
import time

import pytest

from common.errors import EXIT_CONFIG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DHO = ["--config", "configs/dho2_mlp.py"]
SIGN = ["--config", "configs/sign1bit_digits.py"]
VRP = ["--config", "configs/vr_prox_digits.py"]
MULTI = ["--num_processes", "2", "--coordinator", "127.0.0.1:1234"]

# (id, argv after launch.py, text the error line must contain, refused before JAX is imported)
CASES = [
    # the config file and its argument
    ("missing_config", ["--config", "configs/does_not_exist.py"], "--config: configs/does_not_exist.py does not exist", True),
    ("config_not_py", ["--config", "configs/README"], "--config", True),
    ("dho2_mlp_bad_arg", ["--config", "configs/dho2_mlp.py:3"], "must be 1, 2, 4 or 8", True),
    ("dho_mlp_digits_bad_arg", ["--config", "configs/dho_mlp_digits.py:nope"], "hb | adam", True),
    ("sign1bit_bad_arg", ["--config", "configs/sign1bit_digits.py:bogus"], "unknown config arg 'bogus'", True),
    ("vr_prox_digits_bad_arg", ["--config", "configs/vr_prox_digits.py:nope"], "unknown config arg 'nope'", True),
    ("vr_prox_bc_bad_arg", ["--config", "configs/vr_prox_breast_cancer.py:nope"], "unknown config arg 'nope'", True),
    # launcher flags
    ("process_id_out_of_range", [*MULTI, "--process_id", "5"], "--process_id: must be in 0..1", True),
    ("num_processes_zero", ["--num_processes", "0"], "--num_processes", True),
    ("num_processes_not_int", ["--num_processes", "abc"], "num_processes", True),
    ("no_coordinator", ["--num_processes", "2"], "--coordinator", True),
    ("coordinator_no_port", ["--num_processes", "2", "--coordinator", "localhost"], "--coordinator", True),
    ("coordinator_bad_port", ["--num_processes", "2", "--coordinator", "127.0.0.1:99999"], "--coordinator", True),
    ("devices_do_not_split", ["--num_processes", "3", "--coordinator", "127.0.0.1:1234"], "config.num_devices", True),
    ("step_timeout_zero", ["--step_timeout", "0"], "--step_timeout", True),
    ("peer_timeout_negative", ["--peer_timeout", "-1"], "--peer_timeout", True),
    ("init_timeout_zero", ["--init_timeout", "0"], "--init_timeout", True),
    ("unknown_flag", ["--unknown_flag=1"], "unknown_flag", True),
    ("workdir_is_a_file", ["--workdir", "launch.py"], "--workdir", True),
    ("workdir_below_a_file", ["--workdir", "launch.py/sub"], "--workdir", True),
    # misspelt fields: the nearest valid name
    ("misspelt_field", ["--config.lrr=0.1"], "--config.lrr: no such field; did you mean --config.lr?", True),
    ("misspelt_algo_field", [*DHO, "--config.algo.kk=5"], "did you mean --config.algo.k?", True),
    ("misspelt_algo_field_dense", ["--config.algo.kk=5"], "--config.algo.kk: no such field", True),
    ("misspelt_group", ["--config.alog.k=5"], "--config.alog.k", True),
    ("group_as_value", ["--config.algo=5"], "--config.algo: is a group of fields", True),
    # values of the wrong type or range
    ("widths_text", ["--config.widths=abc"], "--config.widths", True),
    ("widths_float", ["--config.widths=(64.5,)"], "config.widths", True),
    ("widths_zero", ["--config.widths=(0,)"], "config.widths", True),
    ("widths_scalar", ["--config.widths=64"], "config.widths", True),
    ("b2_above_one", ["--config.b2=2.0"], "config.b2: must be in [0, 1)", True),
    ("b1_negative", ["--config.b1=-0.1"], "config.b1", True),
    ("momentum_negative", ["--config.momentum=-1.0"], "config.momentum: must be in [0, 1)", True),
    ("weight_decay_negative", ["--config.weight_decay=-1"], "config.weight_decay", True),
    ("lr_zero", ["--config.lr=0"], "config.lr", True),
    ("lr_nan", ["--config.lr=nan"], "config.lr", True),
    ("lr_text", ["--config.lr=abc"], "--config.lr: expects a number", True),
    ("num_steps_zero", ["--config.num_steps=0"], "config.num_steps", True),
    ("num_steps_float", ["--config.num_steps=1.5"], "--config.num_steps: expects an integer", True),
    ("batch_not_divisible", ["--config.batch_size=100"], "config.batch_size: global batch 100", True),
    ("batch_negative", ["--config.batch_size=-8"], "config.batch_size", True),
    ("log_every_zero", ["--config.log_every=0"], "config.log_every", True),
    ("eval_every_negative", ["--config.eval_every=-1"], "config.eval_every", True),
    ("checkpoint_every_negative", ["--config.checkpoint_every=-5"], "config.checkpoint_every", True),
    ("num_devices_negative", ["--config.num_devices=-1"], "config.num_devices", True),
    ("seed_negative", ["--config.seed=-1"], "config.seed", True),
    ("x64_not_bool", ["--config.x64=maybe"], "--config.x64: expects true or false", True),
    ("use_bias_not_bool", ["--config.use_bias=2"], "--config.use_bias", True),
    ("test_fraction_above_one", ["--config.test_fraction=1.5"], "config.test_fraction", True),
    ("unknown_dataset", ["--config.dataset=nope"], "config.dataset: unknown dataset 'nope'", True),
    ("unknown_model", ["--config.model=resnet"], "config.model: unknown model", True),
    ("unknown_optimizer", ["--config.optimizer=lion"], "config.optimizer: unknown optimizer", True),
    ("unknown_algorithm", ["--config.algorithm=nope"], "config.algorithm: unknown algorithm 'nope'", True),
    ("synthetic_no_classes", ["--config.dataset=synthetic", "--config.num_classes=0"], "config.num_classes", True),
    # checks that need JAX, the data or an algorithm package (still before any compile)
    ("too_few_rows", ["--config.dataset=synthetic", "--config.num_rows=9"], "config.dataset: 7 training rows", False),
    ("missing_svmlight", ["--config.dataset=svmlight:/no/such/file"], "config.dataset", False),
    ("logistic_on_digits", ["--config.model=logistic"], "config.model", False),
    ("dho_negative_k", [*DHO, "--config.algo.k=-1"], "config.algo.k", False),
    ("dho_unknown_variant", [*DHO, "--config.algo.variant=kfac"], "config.algo.variant", False),
    ("dho_refresh_zero", [*DHO, "--config.algo.refresh_every=0"], "config.algo.refresh_every", False),
    ("sign1bit_huge_partitions", [*SIGN, "--config.algo.partitions_per_group=100000"],
     "config.algo.partitions_per_group", False),
    ("sign1bit_p_one", [*SIGN, "--config.algo.straggler_prob=1.0"], "config.algo.straggler_prob", False),
    ("sign1bit_bad_bound", [*SIGN, "--config.algo.bound=abc"], "config.algo.bound", False),
    ("sign1bit_adam", [*SIGN, "--config.optimizer=adam"], "config.optimizer", False),
    ("vr_prox_unknown_prox", [*VRP, "--config.algo.prox=l3"], "config.algo.prox", False),
    ("vr_prox_relaxation", [*VRP, "--config.algo.relaxation=2.0"], "config.algo.relaxation", False),
    ("sdca_C_zero", ["--config", "configs/sfb_sdca_svm.py", "--config.algo.C=0.0"], "config.algo.C", False),
]


# End-to-end: launch.py itself, as its own process (refused before JAX, and after JAX is imported).
SUBPROCESS = ("missing_config", "process_id_out_of_range", "misspelt_field", "lr_text", "too_few_rows",
              "dho_negative_k")


def _with_workdir(args, workdir):
  return args if "--workdir" in args else [*args, "--workdir", workdir]


def _launch(args, workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "launch.py", *_with_workdir(args, workdir)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  return proc, time.monotonic() - start


def _batch(base):
  """Every case through ``launch.main`` in one process (``tests/launch_batch.py``), FAST ones first."""
  order = sorted(CASES, key=lambda c: not c[3])
  (base / "cases.json").write_text(json.dumps([_with_workdir(args, str(base / name)) for name, args, _, _ in order]))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "launch_batch.py"), str(base / "cases.json"),
                         str(base / "results.json")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((base / "results.json").read_text())
  return {name: (subprocess.CompletedProcess(args, r["returncode"], r["stdout"], r["stderr"]), r)
          for (name, args, _, _), r in zip(order, results)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """name -> (batch result, batch record); and name -> (process, seconds) for the SUBPROCESS cases."""
  base = tmp_path_factory.mktemp("bad")
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    (base / "batch").mkdir()
    batch = pool.submit(_batch, base / "batch")
    futures = {name: pool.submit(_launch, args, str(base / name)) for name, args, _, _ in CASES if name in SUBPROCESS}
    return batch.result(), {name: f.result() for name, f in futures.items()}


def _assert_one_line(proc, says):
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error: ")]
  assert proc.returncode == EXIT_CONFIG, proc.stderr[-2000:]
  assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-2000:]
  assert says in errors[0], errors[0]
  assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-2000:]


def test_there_are_at_least_sixty_cases():
  assert len(CASES) >= 60


def test_subprocess_cases_exist_and_include_both_kinds():
  fast = {name: fast for name, _, _, fast in CASES}
  assert set(SUBPROCESS) <= set(fast) and {fast[n] for n in SUBPROCESS} == {True, False}


@pytest.mark.parametrize("name,args,says,fast", CASES, ids=[c[0] for c in CASES])
def test_bad_command_line_is_one_line(results, name, args, says, fast):
  batch, processes = results
  proc, record = batch[name]
  _assert_refused(proc, says, fast, record["seconds"])
  if fast:   # refused before JAX
    assert not record["jax_before"], "an earlier case imported JAX, so this one cannot be checked"
    assert not record["jax_after"], "JAX was imported"
  if name in SUBPROCESS:   # launch.py itself, as its own process
    sub_proc, seconds = processes[name]
    _assert_refused(sub_proc, says, fast, seconds)


def _assert_refused(proc, says, fast, seconds):
  """One error line naming ``says``; a case refused before JAX prints nothing else, quickly."""
  _assert_one_line(proc, says)
  if fast:
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert seconds < 10, seconds


def test_changed_widths_on_resume_is_refused_before_the_workdir_is_touched(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  stored = {"algorithm": "dense", "widths": [32]}
  from configs.default import get_config
  stored = json.loads(json.dumps(get_config().to_dict()))
  stored["widths"], stored["lr"] = [32], 0.5
  (workdir / "config.json").write_text(json.dumps(stored))
  before = (workdir / "config.json").read_text()
  proc, _ = _launch(["--workdir", str(workdir)], str(workdir))
  _assert_one_line(proc, "--workdir")
  assert "widths: [32] -> [64]" in proc.stderr and "lr: 0.5 -> 0.003" in proc.stderr
  assert (workdir / "config.json").read_text() == before
  assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]


@pytest.mark.parametrize("args,says", [
    (["/no/such/run"], "--workdirs: /no/such/run is not a directory"),
    (["{empty}"], "has no metrics.jsonl"),
    (["{run}", "--metric", "typo"], "--metric: 'typo' is not logged"),
    (["{run}", "--labels", "a", "b"], "--labels"),
])
def test_plot_cli_bad_input_is_one_line(tmp_path, args, says):
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "bytes": 4, "cum_bytes": 4}) + "\n")
  (tmp_path / "empty").mkdir()
  args = [a.format(run=run, empty=tmp_path / "empty") for a in args]
  proc = subprocess.run([sys.executable, "-m", "common.plots", *args, "--out", str(tmp_path / "p.png")],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  _assert_one_line(proc, says)
  assert not (tmp_path / "p.png").exists()
