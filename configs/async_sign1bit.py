"""1-bit gradient coding with real stragglers on Ray (issue 16; common/async_ray/gc.py).

    python launch.py --config configs/async_sign1bit.py                 # 1-bit GC, B = 'linf', K = 4, first K - 1
    python launch.py --config configs/async_sign1bit.py:const           # 1-bit GC, B = l G / (d (1 - p))
    python launch.py --config configs/async_sign1bit.py:sgc             # real-valued SGC (fp32 payload)
    python launch.py --config configs/async_sign1bit.py:is              # ignore stragglers (d = 1, fp32)
    python launch.py --config configs/async_sign1bit.py:dense           # wait-for-all dense SGD (d = 1, fp32)
    python launch.py --config configs/async_sign1bit.py:pareto          # heavy-tailed delays (Pareto, shape 1.5)
    python launch.py --config configs/async_sign1bit.py:deadline        # decode what arrived by deadline_s
    python launch.py --config configs/async_sign1bit.py --config.kill_worker=2 --config.kill_at_step=50

Digits softmax regression of ``benchmarks/sign1bit.py`` (D = 650, L2 1e-3, label-sorted
partitions), K = num_workers worker actors on a private local Ray node (or ``ray_address``).
Every step each worker sleeps a seeded delay (``delay``: exponential | pareto | none, mean
``delay_mean_s``, capped at ``delay_cap_s``), then sends its encoded gradient; the coordinator
decodes what arrived (``wait``: all | first K - num_stragglers | deadline ``deadline_s``; the
decoder's p is num_stragglers / K, ``straggler_prob`` with a deadline, 0 when waiting for all).
GC methods use allocation frc (or cyclic) with redundancy d; bound (gc_const) 0 = l G / (d (1 - p)).
``target_loss`` > 0 stops at the first step with F(w) <= target_loss. metrics.jsonl: loss F(w),
wall_time, active |R_t|, arrived workers, uplink_bits (cumulative |R_t| x bits per message),
cum_bytes (payload bytes received), live workers. Rerun on the same --workdir, a killed run resumes
from its latest checkpoint (``checkpoint_every``) with one metrics line per step; only num_steps,
log_every, eval_every and checkpoint_every may change (anything else: one line naming --workdir).
"""
import ml_collections

ARGS = ("gc", "const", "sgc", "is", "dense", "pareto", "deadline", "shuffled")
LRS = {"gc_linf": 0.3, "gc_const": 0.03, "sgc": 1.0, "ignore_stragglers": 1.0, "dense": 1.0}


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.runtime = "ray"
  c.algorithm = "sign1bit"
  c.ray_address = None               # None: a private local node on loopback; "host:port" joins a cluster
  c.method = "gc_linf"
  c.num_workers = 4
  c.allocation = "frc"
  c.redundancy = 2
  c.wait = "first"
  c.num_stragglers = 1
  c.deadline_s = 0.1
  c.straggler_prob = 0.2
  c.delay = "exponential"
  c.delay_mean_s = 0.05
  c.pareto_shape = 1.5
  c.delay_cap_s = 2.0
  c.lr = 0.3
  c.bound = 0.0
  c.num_steps = 300
  c.target_loss = 0.0
  c.partitions = "sorted"
  c.seed = 0
  c.step_timeout_s = 60.0
  c.kill_worker = -1
  c.kill_at_step = 0
  c.log_every = 25
  c.checkpoint_every = 100
  for part in (arg or "gc").split(","):
    part = part.strip()
    method = {"gc": "gc_linf", "const": "gc_const", "sgc": "sgc", "is": "ignore_stragglers",
              "dense": "dense"}.get(part)
    if method:
      c.method, c.lr = method, LRS[method]
      c.wait = "all" if method == "dense" else c.wait
    elif part == "pareto":
      c.delay = "pareto"
    elif part == "deadline":
      c.wait = "deadline"
    elif part == "shuffled":
      c.partitions = "shuffled"
    else:
      raise ValueError(f"unknown config arg {part!r}; allowed (comma-separated): {', '.join(ARGS)}")
  return c
