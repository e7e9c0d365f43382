"""FOSI under the paper's protocol (issue 15): steps and wall time to a deep target, FOSI vs its base.

    python -m benchmarks.fosi_protocol            # writes benchmarks/results/fosi_protocol.{md,json,png}
    python -m benchmarks.fosi_protocol --quick    # CI-sized smoke run: 2 learning rates per base, short budgets
    python -m benchmarks.fosi_protocol --quick --tasks quadratic --bases gd --steps 120 --curves --out DIR
                                                  # the test's run: one task, one base, per-step losses in the JSON
    python -m benchmarks.fosi_protocol --methods kfac
                                                  # K-FAC only, to the targets in the existing JSON; its section
                                                  # replaces the K-FAC section of fosi_protocol.md/.json

Single device (``dho.fosi(..., axis_name=None)``), float32, full-batch gradients, three tasks:

* ``lr``: multinomial logistic regression on sklearn digits (/16, as ``common.data``), the FOSI paper's
  LR-MNIST protocol scaled down ([F] Sec. 4 / App.: k = 10, T = 800, alpha = 0.01, warm-up one epoch;
  the full training set of 1,438 rows is one batch, so one epoch = one step);
* ``quadratic``: the authors' ill-conditioned quadratic ([F] App., ``experiments/quadratic/
  quadratic_jax_kappa_zeta.py::prepare_hessian``): n = 100, eigenvalues 1e-3 * kappa^i, kappa = 1.12
  (condition number 1.12^99 = 7.5e4), the d/2 smallest and d/2 largest mixed by a random rotation of a
  d = 50 block, x0 = E (0.5, 1, 0.5, ...), f = x^T H x / 2;
* ``ae``: a 64-32-8-32-64 tanh autoencoder on digits with mean squared error.

K-FAC beside FOSI: ``common.algos.kfac``'s step (kfac-jax 0.0.8 with the adapter's patch) on one device, full
batch, at a grid of learning rates x dampings, steps and wall time (its inverse refreshes included) to the same
targets; the quadratic has no layer or likelihood for kfac-jax to register, and the table says so.

Protocols: (a) the paper's, FOSI at its base's tuned learning rate; (b) each method at its own tuned
rate from the grid. Tuned = fewest steps to the target, ties by final loss. The target of a
(task, base) is fixed by a rule stated before the runs: the loss the base optimizer reaches at the end
of the full budget at the grid rate with the lowest final loss. Wall time counts every step from the
first call after compilation, Lanczos refreshes included (blocking on each step).

[F] H. Sivan, M. Gabel, A. Schuster, "FOSI: Hybrid First and Second Order Optimization", ICLR 2024
    (arXiv:2302.08484), Alg. 1-2, Eq. (2)-(4); its code github.com/hsivan/fosi.
[MG] J. Martens, R. Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
    ICML 2015, Eq. (1)-(2), §6.3.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import dho  # noqa: E402
from benchmarks.notes import RESULTS  # noqa: E402
from common import data as data_lib  # noqa: E402

K, REFRESH_EVERY = 10, 800             # [F] LR-MNIST: approx_k = 10, num_iters_to_approx_eigs = 800
ALPHA = 0.01                           # [F] experiments' alpha
LR_WEIGHT_DECAY = 1e-4                 # inside the LR loss (the ESE sees it), on the weights only
QUAD_KAPPA, QUAD_BLOCK, QUAD_DIM = 1.12, 50, 100
DIVERGED = 1e3                         # a loss above DIVERGED x the initial loss (or not finite) stops a run
BASES = {"gd": lambda lr: optax.sgd(lr), "hb": lambda lr: optax.sgd(lr, momentum=0.9),
         "adam": lambda lr: optax.adam(lr)}
PRESETS = {"gd": dho.fosi_sgd, "hb": dho.fosi_momentum, "adam": dho.fosi_adam}
LABEL = {"gd": "GD", "hb": "HB", "adam": "Adam"}
# K-FAC through common.algos.kfac (kfac-jax 0.0.8 with the adapter's patch): kfac-jax's default estimation mode,
# factor EMA and inverse period; momentum 0.9 as the HB base and configs/kfac_mlp.py.
KFAC_MODE, KFAC_MOMENTUM, KFAC_EMA, KFAC_PERIOD = "ggn_curvature_prop", 0.9, 0.95, 5
KFAC_GRID = {"lr": (0.1, 0.3, 1.0), "damping": (1e-3, 1e-2, 1e-1)}
KFAC_HEADING = "#### K-FAC beside FOSI (kfac-jax)"
METHODS = ("base", "fosi", "kfac")


@dataclasses.dataclass
class Task:
  name: str
  title: str
  params: Any
  loss_fn: Callable            # loss_fn(params, batch) -> scalar, mean over the batch
  batch: Any
  steps: int
  grids: dict                  # base -> learning rates
  fosi_kw: dict                # base -> dict(alpha=..., scale_clip=...)
  warmup: int = 1              # one epoch = one full-batch step
  note: str = ""
  kfac_loss: Callable | None = None   # kfac_loss(params, Shard) -> loss_fn's value, output registered for kfac-jax
  kfac_batch: Any = None              # task.batch as the Shard (x, y, mask) kfac-jax's step reads rows from
  kfac_refused: str = ""              # why K-FAC does not run the task (when kfac_loss is None)


@dataclasses.dataclass
class Run:
  losses: list | None          # losses[t] = loss after t steps (t = 0..steps); None if diverged
  times: list                  # wall seconds of each step call
  params: Any = None


# ----------------------------------------------------------------------------- tasks
def _digits():
  d = data_lib.load("digits")
  return jnp.asarray(d.x_train), jnp.asarray(d.y_train)


def lr_task(steps: int, grids=None) -> Task:
  """Softmax regression on digits: the LR-MNIST protocol of [F] at digits scale."""
  x, y = _digits()

  def objective(p, xb, yb, register=False):
    logits = xb @ p["w"] + p["b"]
    if register:      # K-FAC's curvature is that of the cross-entropy; the weight decay is in the gradient only
      import kfac_jax
      kfac_jax.register_softmax_cross_entropy_loss(logits, yb)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return ce + 0.5 * LR_WEIGHT_DECAY * jnp.sum(p["w"] ** 2)
  loss_fn = lambda p, batch: objective(p, *batch)
  params = {"w": jnp.zeros((x.shape[1], 10), jnp.float32), "b": jnp.zeros((10,), jnp.float32)}
  return Task("lr", "softmax regression on digits (n = 650)", params, loss_fn, (x, y), steps,
              grids or {"hb": (0.3, 1.0, 3.0, 10.0, 30.0), "adam": (1e-2, 3e-2, 0.1, 0.3)},
              {"hb": dict(alpha=ALPHA, scale_clip=3.0), "adam": dict(alpha=ALPHA)},
              note=f"cross-entropy + {LR_WEIGHT_DECAY:g}/2 |W|^2 (weights only), zero init, batch = all "
                   f"{x.shape[0]} training rows, W = 1 (one epoch), T = {REFRESH_EVERY}, alpha = {ALPHA}, "
                   "c_max 3 (HB) / 1 (Adam)",
              kfac_loss=lambda p, shard: objective(p, shard.x, shard.y, register=True),
              kfac_batch=data_lib.Shard(x, y, jnp.ones(x.shape[0], jnp.float32)))


def quadratic_hessian(kappa=QUAD_KAPPA, block=QUAD_BLOCK, n=QUAD_DIM, seed=1234):
  """[F]'s ``prepare_hessian(kappa, dim_non_diag)``: diagonal 1e-3 kappa^i with the ``block``/2 smallest
  and ``block``/2 largest values first, that ``block`` x ``block`` corner rotated by a random special
  orthogonal matrix (numpy seed 1234, as the authors). Returns (H, eigenvalues, eigenvectors), float64."""
  from scipy.stats import special_ortho_group
  diag = [1e-3 * kappa ** i for i in range(n)]
  diag = diag[:block // 2] + diag[-block // 2:] + diag[block // 2:-block // 2]
  h = np.diag(np.asarray(diag, np.float64))
  v = special_ortho_group.rvs(block, random_state=np.random.RandomState(seed))
  h[:block, :block] = v @ np.diag(diag[:block]) @ v.T
  h = (h + h.T) / 2
  vals, vecs = np.linalg.eigh(h)
  return h, vals, vecs


def quadratic_x0(vecs):
  """[F]'s ``get_x_initial``: coefficient 0.5 on every eigenvector (ascending), 1.0 on the second."""
  c = np.full(vecs.shape[0], 0.5)
  c[1] = 1.0
  return vecs @ c


def quadratic_task(steps: int, grids=None) -> Task:
  h, vals, vecs = quadratic_hessian()
  hj = jnp.asarray(h, jnp.float32)

  def loss_fn(x, batch):
    del batch
    return 0.5 * x @ (hj @ x)
  lmax = float(vals[-1])
  grids = grids or {"gd": tuple(f / lmax for f in (0.5, 1.0, 1.5, 1.9)),
                    "hb": tuple(f / lmax for f in (0.2, 0.5, 1.0, 2.0, 3.5)),
                    "adam": (0.03, 0.1, 0.3)}
  return Task("quadratic", f"ill-conditioned quadratic (n = {QUAD_DIM}, kappa = {vals[-1] / vals[0]:.3g})",
              jnp.asarray(quadratic_x0(vecs), jnp.float32), loss_fn, jnp.zeros(()), steps, grids,
              {"gd": dict(alpha=1.0, scale_clip=np.inf), "hb": dict(alpha=0.1, scale_clip=np.inf),
               "adam": dict(alpha=1.0)},
              note=f"[F]'s kappa_zeta construction, kappa = {QUAD_KAPPA}, rotated block {QUAD_BLOCK}; the authors' "
                   "FOSI settings for it: c_max = inf (GD, HB), alpha = 1 (GD: exact Newton in span V; Adam: EMA "
                   "Newton momentum), alpha = 0.1 with heavy-ball Newton momentum (HB, = their (1-beta) EMA); "
                   f"W = 1, T = {REFRESH_EVERY}; GD and HB grids in units of 1/lambda_max",
              kfac_refused="f = x^T H x / 2 has no layer and no predictive distribution for kfac-jax to register "
                           "(K-FAC approximates the Fisher/GGN block of a layer's weights; with the loss left "
                           "unregistered kfac-jax stops with 'No registered losses have been found during tracing')")


def ae_task(steps: int, grids=None, widths=(64, 32, 8, 32, 64)) -> Task:
  """Autoencoder on digits (the AE-CIFAR10 experiment of [F] at digits scale)."""
  x, _ = _digits()
  keys = jax.random.split(jax.random.PRNGKey(0), len(widths) - 1)
  params = [{"w": jax.random.normal(kk, (a, b), jnp.float32) / np.sqrt(a), "b": jnp.zeros((b,), jnp.float32)}
            for kk, a, b in zip(keys, widths[:-1], widths[1:])]

  def loss_fn(p, batch, register=False):
    h = batch
    for i, layer in enumerate(p):
      h = h @ layer["w"] + layer["b"]
      h = jnp.tanh(h) if i < len(p) - 1 else h
    if register:      # kfac-jax's squared error is weight * sum / rows; the mean over the outputs is weight 1/d
      import kfac_jax
      kfac_jax.register_squared_error_loss(h, batch, weight=1.0 / batch.shape[1])
    return jnp.mean((h - batch) ** 2)
  n = sum(a.size for a in jax.tree.leaves(params))
  return Task("ae", f"autoencoder {'-'.join(map(str, widths))} on digits (n = {n:,})", params, loss_fn, x, steps,
              grids or {"hb": (0.3, 1.0, 3.0), "adam": (1e-2, 3e-2, 0.1)},
              {"hb": dict(alpha=ALPHA, scale_clip=1.0), "adam": dict(alpha=ALPHA)},
              note=f"tanh hidden layers, linear output, mean squared error, N(0, 1/fan_in) init (key 0), batch = all "
                   f"{x.shape[0]} training rows, W = 1, T = {REFRESH_EVERY}, alpha = {ALPHA}, c_max = 1 (HB, as "
                   "[F]'s AE runs; Adam forced 1)",
              kfac_loss=lambda p, shard: loss_fn(p, shard.x, register=True),
              kfac_batch=data_lib.Shard(x, jnp.zeros(x.shape[0], jnp.int32), jnp.ones(x.shape[0], jnp.float32)))


# ----------------------------------------------------------------------------- runs
def make_tx(task: Task, base: str, method: str, lr):
  """The base optimizer at ``lr``, or FOSI ([F] Alg. 2, the reference preset of that base) around it."""
  tx = BASES[base](lr)
  if method == "base":
    return tx
  return PRESETS[base](tx, task.loss_fn, k=K, refresh_every=REFRESH_EVERY, warmup=task.warmup, axis_name=None,
                       **task.fosi_kw[base])


def make_step(task: Task, base: str, method: str):
  """One jitted step for every learning rate (the rate is an argument): (params, state, lr) ->
  (params, state, loss at the params before the step)."""
  def step(params, state, lr, batch):
    loss, grads = jax.value_and_grad(task.loss_fn)(params, batch)
    extra = {} if method == "base" else {"batch": batch}
    updates, state = make_tx(task, base, method, lr).update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state, loss
  return jax.jit(step)


def run(task: Task, base: str, method: str, lr: float, step) -> Run:
  state = make_tx(task, base, method, lr).init(task.params)
  return loop(task, step, state, jnp.float32(lr), task.batch)


def loop(task: Task, step, state, hyper, batch, stop_at: float | None = None) -> Run:
  """``task.steps`` blocking calls of ``step(params, state, hyper, batch)`` from ``task.params`` after one
  discarded (compiling) call; stops early when diverged or, given ``stop_at``, once the loss is <= it."""
  params = task.params
  jax.block_until_ready(step(params, state, hyper, batch))        # compile (discarded)
  losses, times = [], []
  for _ in range(task.steps):
    t0 = time.perf_counter()
    params, state, loss = jax.block_until_ready(step(params, state, hyper, batch))
    times.append(time.perf_counter() - t0)
    losses.append(float(loss))
    if not np.isfinite(losses[-1]) or losses[-1] > DIVERGED * losses[0]:
      return Run(None, times)
    if stop_at is not None and losses[-1] <= stop_at:
      break
  final = float(jax.jit(task.loss_fn)(params, task.batch))
  return Run(losses + [final] if np.isfinite(final) else None, times, params)


def first_reach(r: Run, target: float):
  """(steps, wall seconds) to the first loss <= target, or (None, None)."""
  if r.losses is None:
    return None, None
  t = next((i for i, l in enumerate(r.losses) if l <= target), None)
  return (None, None) if t is None else (t, float(np.sum(r.times[:t])))


def run_grid(task: Task, log=print) -> dict:
  runs = {}
  for base, lrs in task.grids.items():
    for method in ("base", "fosi"):
      step = make_step(task, base, method)
      for lr in lrs:
        runs[(base, method, lr)] = r = run(task, base, method, lr, step)
        log(f"{task.name} {method} {base} lr={lr:.4g} final={'diverged' if r.losses is None else f'{r.losses[-1]:.6g}'}"
            f" {np.sum(r.times):.2f}s")
  return runs


def target_of(task: Task, runs: dict, base: str):
  """The rule fixed before the runs: final loss of the base at the grid rate with the lowest final loss."""
  finals = [(runs[(base, "base", lr)].losses[-1], lr) for lr in task.grids[base]
            if runs[(base, "base", lr)].losses is not None]
  return min(finals)


def tuned(task: Task, runs: dict, base: str, method: str, target: float):
  """Grid rate with the fewest steps to ``target``, ties by final loss; None if no rate reaches it."""
  cands = []
  for lr in task.grids[base]:
    r = runs[(base, method, lr)]
    steps, _ = first_reach(r, target)
    if steps is not None:
      cands.append((steps, r.losses[-1], lr))
  return min(cands)[2] if cands else None


def compare(task: Task, runs: dict) -> list:
  rows = []
  for base in task.grids:
    target, ref_lr = target_of(task, runs, base)
    base_lr = tuned(task, runs, base, "base", target)
    fosi_lr = tuned(task, runs, base, "fosi", target)
    for protocol, flr in (("(a) same lr", base_lr), ("(b) each tuned", fosi_lr)):
      rb = runs[(base, "base", base_lr)]
      row = dict(task=task.name, base=base, protocol=protocol, target=target, base_lr=base_lr, fosi_lr=flr)
      row["base_steps"], row["base_wall"] = first_reach(rb, target)
      row["base_final"] = rb.losses[-1]
      if flr is None:
        row.update(fosi_steps=None, fosi_wall=None, fosi_final=None)
      else:
        rf = runs[(base, "fosi", flr)]
        row["fosi_steps"], row["fosi_wall"] = first_reach(rf, target)
        row["fosi_final"] = None if rf.losses is None else rf.losses[-1]
      rows.append(row)
  return rows


# ----------------------------------------------------------------------------- K-FAC
def kfac_grid(task: Task, stop_at: float, lrs, dampings, log=print) -> dict:
  """K-FAC ([MG] Martens & Grosse, ICML 2015, Eq. (1)-(2), §6.3 damping) at every (lr, damping) of the grid,
  one device, full batch: ``common.algos.kfac.step`` with ``axis_name=None`` (kfac-jax's
  ``BlockDiagonalCurvature``; factor EMA every step, pi-damped inverses every ``KFAC_PERIOD`` steps from the
  first). One compiled step serves the grid (the hyper-parameters are arguments). A run stops at ``stop_at``."""
  from common.algos import kfac as kfac_lib
  estimator = kfac_lib.make_estimator(task.kfac_loss, KFAC_MODE)
  kfac_lib.finalize(estimator, task.params, task.kfac_batch)
  key = jax.random.key(0)
  start = kfac_lib.init(estimator, task.params, task.kfac_batch, key)

  def step(params, state, hyper, batch):
    return kfac_lib.step(estimator, task.kfac_loss, hyper, params, state, batch,
                         jax.random.fold_in(key, state.count), None)
  step = jax.jit(step)
  runs = {}
  for lr in lrs:
    for damping in dampings:
      hyper = kfac_lib.Hyper(jnp.float32(lr), jnp.float32(KFAC_MOMENTUM), jnp.float32(damping),
                             jnp.float32(KFAC_EMA), jnp.int32(KFAC_PERIOD))
      runs[(lr, damping)] = r = loop(task, step, start, hyper, task.kfac_batch, stop_at)
      log(f"{task.name} kfac lr={lr:.4g} damping={damping:g} steps={len(r.times)} "
          f"final={'diverged' if r.losses is None else f'{r.losses[-1]:.6g}'} {np.sum(r.times):.2f}s")
  return runs


def kfac_rows(task: Task, runs: dict, rows: list) -> list:
  """Per target of ``rows`` (the FOSI table's protocol-(b) rows of ``task``): K-FAC's tuned (lr, damping) =
  fewest steps to that target, ties by wall time, beside the base's and FOSI's tuned steps."""
  out = []
  for r in rows:
    if r["task"] != task.name or not r["protocol"].startswith("(b)"):
      continue
    reach = {hp: first_reach(run, r["target"]) for hp, run in runs.items()}
    hits = [(steps, wall, hp) for hp, (steps, wall) in reach.items() if steps is not None]
    row = dict(task=task.name, target_of=r["base"], target=r["target"], base_lr=r["base_lr"],
               base_steps=r["base_steps"], base_wall=r["base_wall"], fosi_lr=r["fosi_lr"],
               fosi_steps=r["fosi_steps"], fosi_wall=r["fosi_wall"], kfac_lr=None, kfac_damping=None,
               kfac_steps=None, kfac_wall=None)
    if hits:
      steps, wall, (lr, damping) = min(hits)
      row.update(kfac_lr=lr, kfac_damping=damping, kfac_steps=steps, kfac_wall=wall)
    out.append(row)
  return out


def kfac_section(tasks: list, kfac_runs: dict, rows: list, cmd: str, seconds: float, load, load_end) -> list:
  L = [KFAC_HEADING, "",
       f"Command: `{cmd}` on {jax.default_backend()}, one device, float32, {seconds:.0f} s (2 cores shared with "
       f"other jobs; load average {load[0]:.1f} at the start, {load_end[0]:.1f} at the end). K-FAC = "
       "`common.algos.kfac.step` with `axis_name=None` (kfac-jax 0.0.8 `BlockDiagonalCurvature`, layers "
       f"auto-registered, `{KFAC_MODE}`, the adapter's patch for this jax), full batch, momentum {KFAC_MOMENTUM}, "
       f"factor EMA {KFAC_EMA}, factor-inverse refresh every {KFAC_PERIOD} steps from the first; grid lr "
       f"{list(KFAC_GRID['lr'])} x damping {list(KFAC_GRID['damping'])} (quick runs: the middle value of each). "
       "Losses registered: softmax cross-entropy (lr; its weight decay is in the gradient, not in the curvature), "
       "squared error with weight 1/64 (ae, = the mean over outputs). Targets, base and FOSI columns: the table "
       "above, protocol (b). K-FAC's tuned point = fewest steps to the target, ties by wall time. A K-FAC run stops "
       "once its loss is <= the task's lowest target (steps to either target are unchanged). Wall = the blocking "
       "step calls up to the target after compilation, the refresh steps included; the base and FOSI wall times "
       "come from the run above, at its load, so wall ratios across the two runs are indicative only.", "",
       "| task | target of | target loss | base lr | base steps | FOSI lr | FOSI steps | K-FAC lr | K-FAC damping "
       "| K-FAC steps | K-FAC wall s | steps base/K-FAC | steps FOSI/K-FAC | wall base/K-FAC | wall FOSI/K-FAC |",
       "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for t in tasks:
    if t.kfac_loss is None:
      L.append(f"| {t.name} | - | - | - | - | - | - | not run: {t.kfac_refused} | | | | | | | |")
      continue
    for r in (r for r in rows if r["task"] == t.name):
      L.append(f"| {r['task']} | {LABEL[r['target_of']]} | {r['target']:.6g} | {_fmt(r['base_lr'])} | "
               f"{_fmt(r['base_steps'], 'd')} | {_fmt(r['fosi_lr'])} | {_fmt(r['fosi_steps'], 'd')} | "
               f"{_fmt(r['kfac_lr'])} | {_fmt(r['kfac_damping'], 'g')} | "
               f"{_fmt(r['kfac_steps'], 'd') if r['kfac_lr'] is not None else 'not reached'} | "
               f"{_fmt(r['kfac_wall'], '.3f')} | {_ratio(r['base_steps'], r['kfac_steps'])} | "
               f"{_ratio(r['fosi_steps'], r['kfac_steps'])} | {_ratio(r['base_wall'], r['kfac_wall'])} | "
               f"{_ratio(r['fosi_wall'], r['kfac_wall'])} |")
  for t in tasks:
    if t.kfac_loss is None:
      continue
    targets = [(r["target_of"], r["target"]) for r in rows if r["task"] == t.name]
    L += ["", f"K-FAC grid for {t.name} (steps to each target; `div` = diverged):", "",
          "| lr | damping | " + " | ".join(f"steps to {LABEL[b]} target" for b, _ in targets)
          + " | step calls | lowest loss | ms/step |",
          "|---|---|" + "---|" * len(targets) + "---|---|---|"]
    for (lr, damping), run in kfac_runs[t.name].items():
      ms = 1e3 * float(np.mean(run.times))
      if run.losses is None:
        cells = ["div"] * len(targets) + [str(len(run.times)), "-"]
      else:
        cells = [_fmt(first_reach(run, v)[0], "d") if first_reach(run, v)[0] is not None else "not reached"
                 for _, v in targets] + [str(len(run.times)), f"{min(run.losses):.6g}"]
      L.append(f"| {lr:.4g} | {damping:g} | " + " | ".join(cells) + f" | {ms:.2f} |")
  return L


def _kfac_targets(out: str, names: list, parser) -> list:
  """The FOSI table's rows of ``names`` from ``out/fosi_protocol.json`` (``--methods kfac`` merges into it)."""
  path = os.path.join(out, "fosi_protocol.json")
  if not os.path.exists(path):
    parser.error(f"--methods kfac takes its targets from {path}, which does not exist: run the base and FOSI "
                 "first (--methods base,fosi,kfac)")
  with open(path) as f:
    rows = [r for r in json.load(f)["rows"] if r["task"] in names]
  missing = [n for n in names if not any(r["task"] == n for r in rows)]
  if missing:
    parser.error(f"--methods kfac: {path} has no rows for task(s) {missing}; run them with --methods base,fosi,kfac")
  return rows


def _merge_kfac(out: str, section: list, payload: dict) -> None:
  """Replaces (or appends) the K-FAC section of ``out/fosi_protocol.md`` and the ``kfac`` entry of its JSON."""
  md_path, js_path = os.path.join(out, "fosi_protocol.md"), os.path.join(out, "fosi_protocol.json")
  with open(md_path) as f:
    head = f.read().split(KFAC_HEADING)[0].rstrip()
  with open(md_path, "w") as f:
    f.write(head + "\n\n" + "\n".join(section).rstrip() + "\n")
  with open(js_path) as f:
    js = json.load(f)
  js["kfac"] = payload
  with open(js_path, "w") as f:
    json.dump(js, f, indent=1)


# ----------------------------------------------------------------------------- spectrum
def hessian_eigvals(task: Task, params) -> np.ndarray:
  """All eigenvalues (ascending, float64) of the Hessian of the task's loss at ``params``: columns by
  forward-over-reverse HVPs (chunked ``lax.map``), then ``numpy.linalg.eigvalsh``."""
  flat, unravel = ravel_pytree(params)

  def columns(theta, batch):      # arguments, not closed-over constants (XLA would constant-fold them)
    grad = jax.grad(lambda v: task.loss_fn(unravel(v), batch))
    hvp = lambda e: jax.jvp(grad, (theta,), (e,))[1]
    return jax.lax.map(hvp, jnp.eye(theta.shape[0], dtype=theta.dtype), batch_size=64)
  h = jax.jit(columns)(flat, task.batch)
  h = np.asarray(h, np.float64)
  return np.linalg.eigvalsh((h + h.T) / 2)


def spectrum_row(task: Task, params, where: str) -> dict:
  ev = hessian_eigvals(task, params)
  lam = ev[::-1]                                   # descending
  pos = lam[lam > 1e-7 * lam[0]]
  return dict(task=task.name, where=where, n=len(ev), lam1=lam[0], lam10=lam[K - 1], lam11=lam[K],
              lam_min_pos=pos[-1], lam_min=lam[-1], n_neg=int(np.sum(lam < -1e-7 * lam[0])),
              n_tiny=int(len(lam) - len(pos) - np.sum(lam < -1e-7 * lam[0])),
              kappa=lam[0] / pos[-1], kappa_rest=lam[K] / pos[-1])


# ----------------------------------------------------------------------------- report
def _fmt(v, spec=".4g"):
  return "-" if v is None else format(v, spec)


def _ratio(a, b):
  return f"{a / b:.2f}x" if a is not None and b else "-"


def table(rows: list) -> list:
  L = ["| task | base | protocol | target loss | base lr | base steps | base wall s | FOSI lr | FOSI steps | "
       "FOSI wall s | steps base/FOSI | wall base/FOSI | final loss base | final loss FOSI |",
       "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    L.append(f"| {r['task']} | {LABEL[r['base']]} | {r['protocol']} | {r['target']:.6g} | {_fmt(r['base_lr'])} | "
             f"{_fmt(r['base_steps'], 'd')} | {_fmt(r['base_wall'], '.3f')} | {_fmt(r['fosi_lr'])} | "
             f"{_fmt(r['fosi_steps'], 'd')} | {_fmt(r['fosi_wall'], '.3f')} | "
             f"{_ratio(r['base_steps'], r['fosi_steps'])} | {_ratio(r['base_wall'], r['fosi_wall'])} | "
             f"{r['base_final']:.6g} | {_fmt(r['fosi_final'], '.6g')} |")
  return L


def grid_table(task: Task, runs: dict, rows: list) -> list:
  L = [f"Grid for {task.name} (steps to the target; final loss in brackets; `div` = diverged):", "",
       "| base | lr | base | FOSI |", "|---|---|---|---|"]
  targets = {r["base"]: r["target"] for r in rows}
  for base, lrs in task.grids.items():
    for lr in lrs:
      cells = []
      for method in ("base", "fosi"):
        r = runs[(base, method, lr)]
        s, _ = first_reach(r, targets[base])
        cells.append("div" if r.losses is None else f"{_fmt(s, 'd') if s is not None else 'not reached'} "
                     f"({r.losses[-1]:.4g})")
      L.append(f"| {LABEL[base]} | {lr:.4g} | {cells[0]} | {cells[1]} |")
  return L


def spectrum_table(spec: list) -> list:
  L = ["| task | Hessian at | n | lambda_1 | lambda_10 | lambda_11 | smallest positive | negative / ~0 eigenvalues "
       "| kappa = lambda_1/lambda_min+ | lambda_11/lambda_min+ | lambda_1/lambda_11 |",
       "|---|---|---|---|---|---|---|---|---|---|---|"]
  for s in spec:
    L.append(f"| {s['task']} | {s['where']} | {s['n']} | {s['lam1']:.4g} | {s['lam10']:.4g} | {s['lam11']:.4g} | "
             f"{s['lam_min_pos']:.3g} | {s['n_neg']} / {s['n_tiny']} | {s['kappa']:.3g} | {s['kappa_rest']:.3g} | "
             f"{s['lam1'] / s['lam11']:.3g} |")
  return L


def _floor(t: Task, runs: dict) -> float:
  """What the plot subtracts: f* = 0 for the quadratic, the lowest loss any run reached for the convex
  ``lr`` task (its optimum to float32 rounding), 0 (the loss itself) for the autoencoder."""
  if t.name != "lr":
    return 0.0
  return min(min(r.losses) for r in runs.values() if r.losses is not None)


def plot(tasks, all_runs, all_rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cols = max(len(t.grids) for t in tasks)
  fig, axes = plt.subplots(len(tasks), cols, figsize=(4.2 * cols, 3.2 * len(tasks)), squeeze=False)
  for axrow, t in zip(axes, tasks):
    floor = _floor(t, all_runs[t.name])
    for ax in axrow[len(t.grids):]:
      ax.axis("off")
    for ax, base in zip(axrow, t.grids):
      row = next(r for r in all_rows if r["task"] == t.name and r["base"] == base and r["protocol"].startswith("(b)"))
      for method, lr, style in (("base", row["base_lr"], "--"), ("fosi", row["fosi_lr"], "-")):
        if lr is None:
          continue
        losses = np.maximum(np.asarray(all_runs[t.name][(base, method, lr)].losses) - floor, 1e-8)
        ax.plot(np.arange(len(losses)), losses, style,
                label=f"{'FOSI-' if method == 'fosi' else ''}{LABEL[base]} lr={lr:.3g}")
      ax.axhline(max(row["target"] - floor, 1e-8), color="gray", lw=0.8, ls=":", label="target")
      ax.set_yscale("log"); ax.set_xlabel("step"); ax.grid(alpha=.3); ax.legend(fontsize=7)
      ax.set_title(f"{t.name}: {LABEL[base]}, each at its tuned rate", fontsize=9)
    axrow[0].set_ylabel("train loss" + (f" - {floor:.6g}" if floor else ""))
  fig.tight_layout(); fig.savefig(path, dpi=90); plt.close(fig)


def summary(all_rows: list, spec: list) -> list:
  L = []
  for protocol in ("(a) same lr", "(b) each tuned"):
    parts = [f"{r['task']}/{LABEL[r['base']]} {_ratio(r['base_steps'], r['fosi_steps'])} steps, "
             f"{_ratio(r['base_wall'], r['fosi_wall'])} wall" for r in all_rows if r["protocol"] == protocol]
    L.append(f"- {protocol}: " + "; ".join(parts) + ".")
  realistic = [r for r in all_rows if r["protocol"].startswith("(b)") and r["task"] != "quadratic"
               and r["base_steps"] and r["fosi_steps"]]
  best = max(realistic, key=lambda r: r["base_steps"] / r["fosi_steps"], default=None)
  if best is not None:
    ratio = best["base_steps"] / best["fosi_steps"]
    L.append(f"- Goal (>= 1.4x fewer steps at tuned rates on a realistic task): "
             f"{'met' if ratio >= 1.4 else 'not met'}; best realistic ratio {ratio:.2f}x "
             f"({best['task']}/{LABEL[best['base']]}).")
  for s in spec:
    L.append(f"- {s['task']} Hessian ({s['where']}): lambda_1/lambda_11 = {s['lam1'] / s['lam11']:.3g}, i.e. removing "
             f"the top {K} directions lowers the condition number by at most that factor (GD steps scale with kappa, "
             f"HB with sqrt(kappa): at most {s['lam1'] / s['lam11']:.3g}x / {np.sqrt(s['lam1'] / s['lam11']):.3g}x "
             "fewer steps on the slow directions).")
  return L


def _curves(all_runs: dict, all_rows: list) -> dict:
  """{"task/base/method/lr": losses} for the runs the table compares."""
  out = {}
  for r in all_rows:
    for method in ("base", "fosi"):
      lr = r[f"{method}_lr"]
      if lr is not None:
        out[f"{r['task']}/{r['base']}/{method}/{lr!r}"] = all_runs[r["task"]][(r["base"], method, lr)].losses
  return out


def _jsonable(rows):
  return [{k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in r.items()} for r in rows]


def fosi_table(args, tasks: list, cmd: str, t_start: float) -> list:
  """Runs the base and FOSI grids of ``tasks``; writes fosi_protocol.{md,json,png} to ``args.out``; returns the rows."""
  load = os.getloadavg()
  all_runs, all_rows, spec = {}, [], []
  for t in tasks:
    all_runs[t.name] = run_grid(t)
    rows = compare(t, all_runs[t.name])
    all_rows += rows
    if args.spectrum == "on" or (args.spectrum == "auto" and not args.quick):
      base = next(iter(t.grids))
      ref_lr = target_of(t, all_runs[t.name], base)[1]
      spec.append(spectrum_row(t, all_runs[t.name][(base, "base", ref_lr)].params,
                               f"end of {LABEL[base]} lr={ref_lr:.3g}"))
  os.makedirs(args.out, exist_ok=True)
  plot(tasks, all_runs, all_rows, os.path.join(args.out, "fosi_protocol.png"))
  load_end = os.getloadavg()
  L = ["### FOSI under the paper's protocol (issue 15)", "",
       f"Command: `{cmd}` on {jax.default_backend()}, one device, float32, {time.time() - t_start:.0f} s "
       f"(2 cores shared with other jobs; load average {load[0]:.1f} at the start, {load_end[0]:.1f} at the end). "
       "Plot: `fosi_protocol.png` (each method at its tuned rate; the lr row shows loss minus the lowest loss "
       "any run reached).", "",
       f"FOSI = `dho.fosi` with the reference preset of each base (HB: `fosi_momentum`, Adam: `fosi_adam`, GD: "
       f"`fosi_sgd`), k = {K}, l = 0, m = {4 * K} Lanczos iterations, refresh every T = {REFRESH_EVERY} steps from "
       "call W-1. Bases: GD = `optax.sgd(lr)`, HB = `optax.sgd(lr, momentum=0.9)`, Adam = `optax.adam(lr)`. "
       "Every gradient is full-batch, so the loss of step t is the full training loss. Target (rule fixed before "
       "the runs): the final loss of the base at the grid rate with the lowest final loss after the full budget; "
       "steps = first step whose loss is <= target. (a) = the paper's protocol: FOSI at the base's tuned rate; "
       "(b) = each at its own tuned rate (fewest steps to the target, ties by final loss). Wall time = the "
       "blocking step calls up to the target after compilation, refresh steps included; at this size it is mostly "
       "per-call dispatch, so read it as the cost of the refresh plus FOSI's extra vector work.", ""]
  for t in tasks:
    L.append(f"- **{t.name}**: {t.title}, {t.steps} steps; {t.note}; grid "
             + ", ".join(f"{LABEL[b]} {[float(f'{x:.4g}') for x in lrs]}" for b, lrs in t.grids.items()) + ".")
  L += [""] + table(all_rows) + [""]
  for t in tasks:
    L += grid_table(t, all_runs[t.name], [r for r in all_rows if r["task"] == t.name]) + [""]
  if spec:
    L += ["Hessian spectrum (all eigenvalues by `numpy.linalg.eigvalsh` of the HVP-built Hessian; ~0 = |lambda| <= "
          "1e-7 lambda_1, e.g. softmax's shift-invariant directions, which the gradient never excites):", ""]
    L += spectrum_table(spec) + [""]
  L += ["Summary:", ""] + summary(all_rows, spec)
  with open(os.path.join(args.out, "fosi_protocol.md"), "w") as f:
    f.write("\n".join(L).rstrip() + "\n")
  with open(os.path.join(args.out, "fosi_protocol.json"), "w") as f:
    json.dump({"command": cmd, "rows": _jsonable(all_rows), "spectrum": _jsonable(spec),
               "grids": {t.name: {b: list(map(float, lrs)) for b, lrs in t.grids.items()} for t in tasks},
               "steps": {t.name: t.steps for t in tasks},
               "curves": _curves(all_runs, all_rows) if args.curves else None}, f, indent=1)
  print("\n".join(L))
  return all_rows


def kfac_table(args, tasks: list, rows: list, cmd: str) -> None:
  """K-FAC on every task that has a registered loss, to the targets of ``rows``; merged into ``args.out``."""
  t_start, load = time.time(), os.getloadavg()
  pick = (lambda v: v[len(v) // 2:len(v) // 2 + 1]) if args.quick else (lambda v: v)
  runs, out_rows = {}, []
  for t in tasks:
    if t.kfac_loss is None:
      continue
    stop_at = min(r["target"] for r in rows if r["task"] == t.name)
    runs[t.name] = kfac_grid(t, stop_at, pick(KFAC_GRID["lr"]), pick(KFAC_GRID["damping"]))
    out_rows += kfac_rows(t, runs[t.name], rows)
  section = kfac_section(tasks, runs, out_rows, cmd, time.time() - t_start, load, os.getloadavg())
  curves = {f"{name}/kfac/{lr!r}/{d!r}": r.losses for name, grid in runs.items() for (lr, d), r in grid.items()}
  _merge_kfac(args.out, section, {"command": cmd, "rows": _jsonable(out_rows),
                                  "refused": {t.name: t.kfac_refused for t in tasks if t.kfac_loss is None},
                                  "curves": curves if args.curves else None})
  print("\n".join(section))


def _methods(parser, text: str) -> set:
  methods = {m for m in text.split(",") if m}
  if methods - set(METHODS):
    parser.error(f"--methods: unknown method(s) {sorted(methods - set(METHODS))}; allowed: {', '.join(METHODS)}")
  if ("base" in methods) != ("fosi" in methods) or not methods:
    parser.error(f"--methods {text}: the table compares base and FOSI, so give both or neither "
                 "(kfac alone merges K-FAC rows into the existing results)")
  return methods


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="2 learning rates per base and short budgets (CI)")
  parser.add_argument("--tasks", default="lr,quadratic,ae", help="comma list of lr, quadratic, ae")
  parser.add_argument("--steps", type=int, default=None, help="override every task's step budget")
  parser.add_argument("--bases", default=None, help="comma list of gd, hb, adam (default: every base of a task)")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help="comma list of base, fosi, kfac; kfac alone takes the targets from --out's JSON and "
                           "merges its section into fosi_protocol.md/.json")
  parser.add_argument("--spectrum", choices=("auto", "on", "off"), default="auto",
                      help="Hessian eigenvalues at the end of each base's target run (auto: off with --quick)")
  parser.add_argument("--out", default=RESULTS, help="output folder (fosi_protocol.md/.json/.png)")
  parser.add_argument("--curves", action="store_true",
                      help="also write the per-step losses of every run in the table into the JSON")
  args = parser.parse_args(argv)
  t_start = time.time()
  methods = _methods(parser, args.methods)
  budgets = {"lr": 300, "quadratic": 200, "ae": 300} if args.quick else {"lr": 2400, "quadratic": 1000, "ae": 2400}
  makers = {"lr": lr_task, "quadratic": quadratic_task, "ae": ae_task}
  names = [n for n in args.tasks.split(",") if n]
  unknown = [n for n in names if n not in makers]
  if unknown:
    parser.error(f"--tasks: unknown task(s) {unknown}; allowed: {', '.join(makers)}")
  tasks = []
  for n in names:
    t = makers[n](args.steps or budgets[n])
    if args.bases:
      t.grids = {b: lrs for b, lrs in t.grids.items() if b in args.bases.split(",")}
    if args.quick:   # keep the two rates bracketing the middle of the grid
      t.grids = {b: lrs[1:3] for b, lrs in t.grids.items()}
    if not t.grids:
      parser.error(f"--bases {args.bases}: none of them runs on task {n} (it has {', '.join(makers[n](1).grids)})")
    tasks.append(t)
  cmd = "python -m benchmarks.fosi_protocol" + (" --quick" if args.quick else "") + \
      (f" --tasks {args.tasks}" if args.tasks != parser.get_default("tasks") else "") + \
      (f" --steps {args.steps}" if args.steps else "") + (f" --bases {args.bases}" if args.bases else "") + \
      (f" --methods {args.methods}" if args.methods != parser.get_default("methods") else "")
  if "fosi" in methods:
    rows = fosi_table(args, tasks, cmd, t_start)
  else:
    rows = [r for r in _kfac_targets(args.out, names, parser) if not args.bases or r["base"] in args.bases.split(",")]
  if "kfac" in methods:
    kfac_table(args, tasks, rows, cmd)
  print("wrote", os.path.join(args.out, "fosi_protocol.md"))


if __name__ == "__main__":
  main(sys.argv[1:])
