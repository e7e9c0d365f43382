"""One cell: run a row under a case and classify the result.

  exact     the sharded run equals the single-device reference within the row's tolerance
  refused   a ValueError/TypeError raised by the package itself (its innermost frame is in
            sfb/, dho/, sign1bit/ or vr_prox/) at init or the first update
  SILENT    it ran and differs from the reference (or is not finite)
  CRASH     any other exception (a JAX/optax/flax internal error, a pytree mismatch, or an
            error after the first update)
  n/a       the case does not apply to the method (the reason is printed)

Error (f32): ``max |Δ_sharded - Δ_ref| / max |Δ_ref|`` over all leaves, Δ = final params -
initial params (relative to how far the reference moved, so a lost gradient term cannot hide in
the parameters' size). A parameter is stored in f32, so where the displacement is tiny next to the
parameter (a clipped gradient moves a weight of 0.7 by 4e-4) two exact runs that round in a
different order differ by an ulp of the parameter, which can exceed 1e-5 of the displacement: an
element counts as equal within ``ULPS`` ulps of its reference value (``beyond_ulps``). bf16: ``max_leaf max |p_sharded - p_ref| / max |p_ref|``, at the scale of
each leaf, because a bf16 parameter cannot move by less than its own ulp (2^-8 relative).
"""
from __future__ import annotations

import dataclasses
import os
import traceback

import dho
import jax
import numpy as np
import sfb
import sign1bit
import vr_prox

from proving_ground.cases import Case
from proving_ground.methods import Row

PACKAGE_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sfb, dho, sign1bit, vr_prox))


@dataclasses.dataclass(frozen=True)
class Cell:
  row: str
  case: str
  status: str                  # exact | refused | SILENT | CRASH | n/a
  err: float | None = None
  tol: float | None = None
  message: str = ""

  def text(self) -> str:
    if self.status == "exact":
      return f"exact (max rel err {self.err:.1e}" + (f", {self.message})" if self.message else ")")
    if self.status == "SILENT":
      return f"SILENT: err {self.err:.2e} (tol {self.tol:.0e})" + (f" ({self.message})" if self.message else "")
    if self.status in ("refused", "CRASH"):
      return f"{self.status}: {self.message}"
    return self.message


def rel_err(sharded, reference, initial, bf16: bool = False) -> float:
  if bf16:
    return max(leaf_err(a, b) for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(reference)))
  num = den = 0.0
  for a, b, p0 in zip(jax.tree.leaves(sharded), jax.tree.leaves(reference), jax.tree.leaves(initial)):
    a, b, p0 = (np.asarray(v, np.float64) for v in (a, b, p0))
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
      return float("inf")
    num = max(num, float(np.max(np.abs((a - p0) - (b - p0)), initial=0.0)))
    den = max(den, float(np.max(np.abs(b - p0), initial=0.0)))
  return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


ULPS = 2   # f32 storage floor: 1 ulp measured on chain(clip_by_global_norm, dho2) (README "Tolerances")


def beyond_ulps(sharded, reference, initial, ulps: int = ULPS) -> float:
  """``rel_err`` after forgiving each element ``ulps`` f32 ulps of its reference value."""
  num = den = 0.0
  for a, b, p0 in zip(jax.tree.leaves(sharded), jax.tree.leaves(reference), jax.tree.leaves(initial)):
    a, b, p0 = (np.asarray(v, np.float64) for v in (a, b, p0))
    floor = ulps * np.spacing(np.abs(b).astype(np.float32)).astype(np.float64)
    num = max(num, float(np.max(np.maximum(np.abs(a - b) - floor, 0.0), initial=0.0)))
    den = max(den, float(np.max(np.abs(b - p0), initial=0.0)))
  return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def leaf_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    return float("inf")
  scale = float(np.max(np.abs(b), initial=0.0))
  diff = float(np.max(np.abs(a - b), initial=0.0))
  return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def is_clear_refusal(exc: BaseException) -> bool:
  """A ValueError/TypeError whose innermost frame is one of the packages' own ``raise``."""
  if not isinstance(exc, (ValueError, TypeError)):
    return False
  frames = traceback.extract_tb(exc.__traceback__)
  return bool(frames) and os.path.abspath(frames[-1].filename).startswith(PACKAGE_DIRS)


def _one_line(exc: BaseException, limit: int = 300) -> str:
  msg = " ".join(str(exc).split())
  return msg if len(msg) <= limit else msg[:limit] + " ..."


def run_cell(row: Row, case: Case, mesh) -> Cell:
  reason = row.not_applicable(case)
  if reason:
    return Cell(row.name, case.name, "n/a", message=reason)
  progress = {"step": 0}
  try:
    out = row.run(case, mesh, progress)
  except Exception as exc:  # noqa: BLE001 - every failure is classified, none is hidden
    if is_clear_refusal(exc) and progress["step"] <= 1:
      return Cell(row.name, case.name, "refused", message=_one_line(exc))
    where = "init" if progress["step"] == 0 else f"call {progress['step']}"
    return Cell(row.name, case.name, "CRASH", message=f"{type(exc).__name__} at {where}: {_one_line(exc, 200)}")
  err = rel_err(out.sharded, out.reference, out.initial, out.bf16)
  if err <= out.tol or out.bf16 or not np.isfinite(err):
    return Cell(row.name, case.name, "exact" if err <= out.tol else "SILENT", err=err, tol=out.tol)
  ok = beyond_ulps(out.sharded, out.reference, out.initial) <= out.tol
  return Cell(row.name, case.name, "exact" if ok else "SILENT", err=err, tol=out.tol,
              message=f"within {ULPS} ulps of the f32 params" if ok else "")
