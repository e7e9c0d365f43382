"""DAP-SVRG on sparse elastic-net logistic regression with 100,000 features, rows sparse end to end, 8 workers.

    python launch.py --config configs/vr_prox_sparse.py                     # DAP-SVRG, theta = 1/K, D = 0
    python launch.py --config configs/vr_prox_sparse.py:tap                 # TAP-SVRG (server prox)
    python launch.py --config configs/vr_prox_sparse.py:prox_svrg           # 1 device, Xiao-Zhang ProxSVRG
    python launch.py --config configs/vr_prox_sparse.py --config.num_rows=20000 --config.num_features=200000

Problem (issue 14): ``dataset = "sparse_logistic"``, the seeded text-like problem of
``common.data.sparse_logistic_csr`` (20-60 nonzeros per row at Zipf-distributed columns, unit-l2
rows, labels from a sparse true weight vector; the one ``python -m benchmarks.vr_prox_sparse``
runs), generated in memory as scipy CSR and split 80/20. The rows reach the devices as ELL arrays
(``common.data.EllRows``, sharded by row over the mesh), never as a dense rows x features array;
the logistic model's loss is a gather (``common.models.linear_on_ell``).

P(w) = mean log(1 + exp(-y a.w)) + l1 |w|_1 + (l2/2) |w|^2 with l1 = 1e-4, l2 = 1e-3, no intercept
([HGH] Sec. 5, [XZ] Sec. 4). Rows have unit norm, so each f_i is L = 1/4 smooth and the step is
gamma = 1/L = 4; DAP's relaxed server (theta = 1/(K(D+1)) = 1/8 at D = 0) takes gamma/theta = 32.
One step = one epoch (the full gradient, then ceil(n_train / batch_size) rounds of 8 rows per
worker); the logged loss is P(w) over the training rows. The gap to sklearn saga's optimum of the
same training rows: ``python -m benchmarks.vr_prox_sparse --gap_of <workdir>``.

Default size 16,000 x 100,000 (20,000 rows before the test split): the benchmark's problem.
"""
from configs.common import base_config


def get_config(arg=None):
  config = base_config("vr_prox")
  config.dataset = "sparse_logistic"
  config.num_rows, config.num_features = 20_000, 100_000
  config.model = "logistic"
  config.use_bias = False
  config.num_devices = 8
  config.batch_size = 64                # 8 rows per worker per round
  config.num_steps = 8                  # epochs
  config.log_every = 1
  config.eval_every = 4
  config.checkpoint_every = 0
  gamma = 4.0                           # 1/L for unit rows
  a = config.algo
  a.prox, a.l1, a.l2 = "elastic_net", 1e-4, 1e-3
  a.variant, a.relaxation, a.max_delay, a.delay_schedule = "dap_svrg", 0.0, 0, "uniform"   # theta = 1/K
  arg = arg or "dap"
  if arg == "dap":
    config.lr = gamma * config.num_devices   # gamma / theta
  elif arg == "tap":
    a.variant, config.lr = "tap_svrg", gamma
  elif arg == "prox_svrg":
    a.variant, config.num_devices, config.batch_size, config.lr = "prox_svrg", 1, 8, gamma
  else:
    raise ValueError(f"unknown config arg {arg!r}: dap | tap | prox_svrg")
  return config
