"""Bad Ray-runtime command lines through ``launch.py`` (issue 16: faults and input).

Each is a real subprocess that must exit 2 with exactly one ``error:`` line, as the last line,
naming the field, no traceback, in bounded time: K < 1, deadline <= 0, tau < 0, an unknown
runtime, a Ray config switched to "spmd", and a ``ray_address`` where no Ray listens (a free
loopback port: refused at once, checked before ``ray.init`` so it cannot hang). Same harness
pattern as tests/test_launch_bad_inputs.py: three at a time.
"""
import concurrent.futures
import socket

import pytest

from tests.test_launch_bad_inputs import _assert_one_line, _launch

GC = ["--config", "configs/async_sign1bit.py"]
PS = ["--config", "configs/async_dap_svrg.py"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


PORT = _free_port()   # nothing listens there once the socket is closed

# (id, argv after launch.py, text the error line must contain)
CASES = [
    ("gc_no_workers", [*GC, "--config.num_workers=0"], "config.num_workers: must be an integer >= 1"),
    ("gc_deadline_zero", [*GC, "--config.wait=deadline", "--config.deadline_s=0"], "config.deadline_s: must be"),
    ("gc_deadline_negative", [*GC, "--config.deadline_s=-0.5"], "config.deadline_s: must be a finite number > 0"),
    ("gc_all_stragglers", [*GC, "--config.num_stragglers=4"], "config.num_stragglers: must be < num_workers=4"),
    ("gc_unknown_method", [*GC, "--config.method=qsgd"], "config.method: unknown method 'qsgd'"),
    ("gc_unknown_delay", [*GC, "--config.delay=weibull"], "config.delay: unknown delay 'weibull'"),
    ("gc_dense_not_waiting", [*GC, "--config.method=dense", "--config.wait=first"], "config.wait"),
    ("gc_frc_d_not_dividing", [*GC, "--config.redundancy=3"], "config.redundancy: d=3 does not fit"),
    ("gc_pareto_infinite_mean", [*GC, "--config.delay=pareto", "--config.pareto_shape=1.0"],
     "config.pareto_shape: must be > 1"),
    ("gc_p_one", [*GC, "--config.straggler_prob=1.0"], "config.straggler_prob: must be in [0, 1)"),
    ("gc_kill_unknown_worker", [*GC, "--config.kill_worker=7"], "config.kill_worker"),
    ("gc_empty_address", [*GC, "--config.ray_address="], "config.ray_address: must be None"),
    ("ps_no_workers", [*PS, "--config.num_workers=0"], "config.num_workers: must be an integer >= 1"),
    ("ps_tau_negative", [*PS, "--config.max_delay=-1"], "config.max_delay: must be an integer >= 0"),
    ("ps_timeout_zero", [*PS, "--config.epoch_timeout_s=0"], "config.epoch_timeout_s: must be a finite number > 0"),
    ("ps_kill_server_bad", [*PS, "--config.kill_server_at_version=-3"], "config.kill_server_at_version"),
    ("unknown_runtime", ["--config.runtime=mpi"], "config.runtime: unknown runtime 'mpi'; allowed: spmd, ray"),
    ("ray_config_as_spmd", [*GC, "--config.runtime=spmd"], "config.runtime: 'spmd' needs a config built with"),
    ("gc_unreachable_address", [*GC, f"--config.ray_address=127.0.0.1:{PORT}"],
     f"config.ray_address: no Ray cluster reachable at '127.0.0.1:{PORT}'"),
    ("ps_unreachable_address", [*PS, f"--config.ray_address=127.0.0.1:{PORT}"], "config.ray_address: no Ray cluster"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  base = tmp_path_factory.mktemp("bad_ray")
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {name: pool.submit(_launch, args, str(base / name)) for name, args, _ in CASES}
    return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name,args,says", CASES, ids=[c[0] for c in CASES])
def test_bad_ray_command_line_is_one_line(results, name, args, says):
  proc, seconds = results[name]
  _assert_one_line(proc, says)
  assert seconds < 60, seconds   # no Ray start, no hang on the address (3 at a time on 2 busy cores)
