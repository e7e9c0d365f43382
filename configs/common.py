"""The base config every experiment file starts from; field names are the sweep API.

Usage in an experiment file::

    from configs.common import base_config
    def get_config(arg=None):
      config = base_config(algorithm="sfb")
      config.dataset = "synthetic"
      ...
      return config

Algorithm-specific fields live under ``config.algo`` (``--config.algo.<field>=...``), filled from
the algorithm's defaults (``common/algos/defaults.py``; no JAX import, so a bad command line
fails fast).
"""
import ml_collections

from common import algos


def base_config(algorithm: str = "dense") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_devices = 8            # size of the "data" mesh axis; simulated CPU devices if needed
  c.x64 = False                # float64 everywhere (set before JAX starts)
  # data
  c.dataset = "digits"         # digits | breast_cancer | synthetic | sparse_logistic | svmlight:<path>
  c.test_fraction = 0.2
  c.num_classes = 10           # synthetic only
  c.num_features = 64          # synthetic / sparse_logistic only
  c.num_rows = 4096            # synthetic / sparse_logistic only
  # model
  c.model = "softmax"          # softmax | mlp | logistic
  c.widths = (64,)             # mlp hidden widths
  c.use_bias = True
  # optimisation
  c.algorithm = algorithm      # dense | sfb | sfb_sdca | sign1bit | vr_prox | dho
  c.optimizer = "sgd"          # sgd | momentum | nesterov | adam | adamw (base / after-exchange optimizer)
  c.lr = 0.1
  c.momentum = 0.9
  c.b1 = 0.9
  c.b2 = 0.999
  c.weight_decay = 0.0
  c.batch_size = 256           # global rows per step; must divide by num_devices
  c.num_steps = 1000
  # logging, evaluation, checkpoints
  c.log_every = 100
  c.eval_every = 250
  c.checkpoint_every = 500     # 0 disables checkpoints
  c.algo = algos.default_config(algorithm)
  return c


def override(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """Sets dotted fields as ``--config.<field>=...`` would, e.g. ``override(c, **{"algo.bound": "linf"})``."""
  for key, value in fields.items():
    target = config
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return config
