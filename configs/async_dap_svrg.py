"""DAP-SVRG / TAP-SVRG as a real asynchronous parameter server on Ray (issue 16; common/async_ray).

    python launch.py --config configs/async_dap_svrg.py                  # DAP, K = 2 workers, elastic net
    python launch.py --config configs/async_dap_svrg.py:tap              # TAP: the server applies the prox
    python launch.py --config configs/async_dap_svrg.py:trace_norm       # DAP, multinomial digits, trace norm
    python launch.py --config configs/async_dap_svrg.py --config.num_workers=3 --config.kill_worker=1 \
        --config.kill_at_version=2000                                    # worker 1's process dies; K - 1 go on

Problem "elastic_net" is vr_prox spec problem B (breast_cancer 569 x 30, unit rows, l1 = 3e-3,
l2 = 1e-2); the logged gap is relative to sklearn's optimum (common/references.py). One step =
one epoch: the workers' shard gradients are combined into mu~, then the server takes
updates_per_epoch asynchronous updates. A read older than max_delay (tau) server updates is
refused and re-read. relaxation is DAP's theta (1 = the paper's server, which only adds).
ray_address None starts a private local Ray node; "host:port" joins a running cluster (probed first:
unreachable is one line naming ray_address, exit 2). kill_server_at_version >= 0 makes the server's
process exit at that version: the run ends with one line naming the lost parameter server and the
last checkpoint kept (exit 4).
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.runtime = "ray"
  c.ray_address = None               # None: a private local node on loopback; "host:port" joins a cluster
  c.problem = "elastic_net"
  c.variant = "dap"
  c.num_workers = 2
  c.max_delay = 4
  c.lr = 1.0
  c.relaxation = 1.0
  c.batch_size = 1
  c.num_steps = 10                   # epochs
  c.updates_per_epoch = 569          # m = n
  c.seed = 0
  c.x64 = True
  c.epoch_timeout_s = 120.0
  c.kill_worker = -1
  c.kill_at_version = 0
  c.kill_server_at_version = -1      # fault injection: the server's process exits at this version (-1: never)
  c.l1, c.l2, c.lam = 3e-3, 1e-2, 1e-2
  c.log_every = 1
  arg = arg or "dap"
  if arg == "tap":
    c.variant = "tap"
  elif arg == "trace_norm":
    c.problem, c.updates_per_epoch, c.batch_size = "trace_norm", 1797, 1
  elif arg != "dap":
    raise ValueError(f"unknown config arg {arg!r}: dap | tap | trace_norm")
  return c
