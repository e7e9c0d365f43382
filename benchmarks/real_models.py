"""Issue 14 measurements: the cnn and transformer configs under every algorithm, 8 simulated devices.

    python -m benchmarks.real_models                       # both models, every arg (long on 2 cores)
    python -m benchmarks.real_models --models cnn --args dense,sfb --steps 50

For each model: the parameter count and ``sfb.plan``'s per-layer table (SFB vs dense floats);
for each (model, arg): lowering + compilation time of each program (fosi and dho2 compile their
curvature refresh apart from the step, ``dho.separate_refresh``: one Lanczos iteration, run m times,
and the finish), measured payload bytes per device per step (``common.comm``; the largest branch, a
refresh step's programs summed, each as often as it runs) next to the
algorithm's analytic figure, steady step time and its ratio to dense on the same mesh (median of the
timed steps, blocking each), peak per-device memory from ``memory_analysis()`` (arguments + outputs
− aliased + temporaries, of the dearest program), and the loss after a
fixed budget of steps (``--steps``; validation bits per character for the transformer). Writes
``benchmarks/results/real_models.md`` with the command and the host's load average, since the
simulated devices share the host's cores.
"""
from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax
import numpy as np

from benchmarks.notes import write_result
from common import comm, train
from common.algos import sfb as sfb_adapter
from common.algos.base import AXIS, BuildContext
from configs import cnn_digits, transformer_text

CONFIGS = {"cnn": cnn_digits, "transformer": transformer_text}


def plan_table(config) -> str:
  """``sfb.plan``'s table for the config's model and global batch (payload rule)."""
  exp_config = cnn_digits.with_algorithm("sfb", lambda c: _copy_into(c, config), adam_lr=config.lr,
                                         sign_lr=0.1, sign_rows=0)
  dataset = train.load_dataset(exp_config)
  from common import models
  model = models.from_config(exp_config, dataset)
  params = jax.device_get(model.init(jax.random.key(exp_config.seed)))
  ctx = BuildContext(model=model, dataset=dataset, params=params, num_devices=exp_config.num_devices,
                     batch_per_device=exp_config.batch_size // exp_config.num_devices, axis_name=AXIS)
  return sfb_adapter.make_plan(exp_config, ctx).table()


def _copy_into(target, source):
  for key in ("dataset", "test_fraction", "model", "channels", "widths", "seq_len", "d_model", "num_heads",
              "num_layers", "batch_size", "num_devices"):
    target[key] = source[key]
  return target


def measure(model: str, arg: str, steps: int, timed: int) -> dict:
  config = CONFIGS[model].get_config(arg)
  config.num_steps, config.eval_every, config.checkpoint_every = steps, 0, 0
  exp = train.build(config)
  _, compiled, seconds = exp.compile_timed()
  compile_s = {part: s["lower"] + s["compile"] for part, s in seconds.items()}
  sent = train.measure_branches(exp.method, compiled, comm.collective_bytes(compiled.step))
  peak = compiled.peak_bytes()
  times, _ = exp.time_steps(compiled, timed)
  result = train.run(config, None, quiet=True)      # the fixed budget of steps, from the same start
  final = result.final
  return dict(model=model, arg=arg, params=sum(int(np.size(x)) for x in jax.tree.leaves(exp.params)),
              compile_s=compile_s, payload=sent.largest, analytic=exp.method.analytic_payload,
              step_s=float(np.median(times[1:] or times)), peak=peak, steps=steps,
              loss=final["test_loss"], bpc=final.get("test_bpc"), acc=final["test_accuracy"])


def _seconds(compile_s: dict) -> str:
  """Lowering + compilation per program: ``8.1 s`` or ``step 7.2 s + refresh 6.5 s``."""
  if list(compile_s) == ["step"]:
    return f"{compile_s['step']:.1f} s"
  return " + ".join(f"{part} {s:.1f} s" for part, s in compile_s.items())


def table(rows) -> str:
  dense = {r["model"]: r["step_s"] for r in rows if r["arg"] == "dense"}
  lines = ["| model | arg | bytes/step/device (measured) | analytic | step time | x dense | compile | peak memory/device | "
           "test loss after N steps | test bpc | test acc |", "|" + "---|" * 11]
  for r in rows:
    ratio = f"{r['step_s'] / dense[r['model']]:.2f}" if r["model"] in dense else "n/a"
    analytic = f"{r['analytic']:,.0f}" if r["analytic"] is not None else "n/a"
    bpc = f"{r['bpc']:.3f}" if r["bpc"] is not None else ""
    lines.append(f"| {r['model']} | {r['arg']} | {r['payload']:,.0f} | {analytic} | {r['step_s'] * 1e3:.0f} ms | {ratio} | "
                 f"{_seconds(r['compile_s'])} | {r['peak'] / 2**20:.1f} MiB | {r['loss']:.3f} (N={r['steps']}) | {bpc} | "
                 f"{r['acc']:.3f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--models", default="cnn,transformer")
  parser.add_argument("--args", default=",".join(cnn_digits.ARGS))
  parser.add_argument("--steps", type=int, default=100, help="fixed step budget for the loss column")
  parser.add_argument("--timed", type=int, default=6, help="steps timed for the step-time column")
  parser.add_argument("--name", default="real_models", help="results file benchmarks/results/<name>.md (a partial "
                      "rerun gets its own file rather than replacing the full table)")
  flags = parser.parse_args(argv)
  jax.config.update("jax_num_cpu_devices", 8)
  rows, plans = [], []
  for model in flags.models.split(","):
    config = CONFIGS[model].get_config("dense")
    plans.append(f"**{model}** (`configs/{CONFIGS[model].__name__.split('.')[-1]}.py`, global batch "
                 f"{config.batch_size}):\n\n```\n{plan_table(config)}\n```")
    for arg in flags.args.split(","):
      rows.append(measure(model, arg, flags.steps, flags.timed))
      print(table(rows), flush=True)
  command = "python -m benchmarks.real_models " + " ".join(sys.argv[1:] if argv is None else argv)
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  title = "Real models (issue 14)" if flags.name == "real_models" else f"Real models (issue 14): {flags.name}"
  text = (f"### {title}\n\n`{command}` (8 simulated CPU devices; host load average at the end "
          f"{load}: times are shared-core times, bytes are exact)\n\n" + "\n\n".join(plans) + "\n\n" + table(rows))
  print("wrote", write_result(flags.name, text))


if __name__ == "__main__":
  main()
