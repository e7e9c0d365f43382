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
  c.runtime = "spmd"           # spmd: jit(shard_map) on the "data" mesh | ray: common/async_ray (issue 16)
  c.seed = 0
  c.num_devices = 8            # size of the "data" mesh axis; simulated CPU devices if needed
  c.x64 = False                # float64 everywhere (set before JAX starts)
  # data
  c.dataset = "digits"         # digits | breast_cancer | synthetic | sparse_logistic | text | svmlight:<path>
  c.test_fraction = 0.2
  c.max_train_rows = 0         # > 0: only the first that many training rows (text: windows); 0 = all
  c.seq_len = 64               # text only: tokens per window (the model sees seq_len, predicts the next)
  c.num_classes = 10           # synthetic only
  c.num_features = 64          # synthetic / sparse_logistic only
  c.num_rows = 4096            # synthetic / sparse_logistic only
  # model
  c.model = "softmax"          # softmax | mlp | logistic | cnn | transformer
  c.widths = (64,)             # mlp hidden widths (cnn: the Dense head's hidden widths)
  c.channels = (16, 32, 64)    # cnn: channels of its residual stages (stride 2 from the second)
  c.d_model = 224              # transformer: width; MLP width 4 * d_model
  c.num_heads = 4              # transformer: attention heads (d_model must divide by it)
  c.num_layers = 2             # transformer: decoder blocks (1,339,776 params with the defaults; 2 wide blocks
                               # rather than 5 of width 128: each program compiles in under 10 s, BUILD_NOTES)
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
