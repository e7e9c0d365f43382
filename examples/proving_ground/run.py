"""Prints the proving-ground table: transformation x case -> exact / refused / SILENT / CRASH / n/a.

    python examples/proving_ground/run.py                    # every cell, 8 simulated CPU devices
    python examples/proving_ground/run.py --rows sfb --cases plain,l2
    python examples/proving_ground/run.py --markdown         # the table as markdown
    python examples/proving_ground/run.py --two_process      # + the 2 processes x 4 devices column
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __name__ == "__main__":   # a script: 8 simulated CPU devices, set before JAX starts
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  jax.config.update("jax_num_cpu_devices", 8)
  jax.config.update("jax_disable_most_optimizations", True)   # tiny programs: compiling costs more than running

import jax  # noqa: E402

from proving_ground import cells, multiproc, spmd  # noqa: E402
from proving_ground.cases import BY_NAME as CASES  # noqa: E402
from proving_ground.methods import BF16_TOL  # noqa: E402
from proving_ground.methods import BY_NAME as ROWS  # noqa: E402


def run_table(row_names, case_names, mesh, log=None):
  out = []
  for r in row_names:
    for c in case_names:
      t0 = time.perf_counter()
      cell = cells.run_cell(ROWS[r], CASES[c], mesh)
      if log:
        log(f"{r:<30} {c:<12} {time.perf_counter() - t0:5.1f}s  {cell.text()}")
      out.append(cell)
  return out


def two_process_column(row_names, mesh, out_path="/tmp/proving_ground_2proc.npz"):
  """Cells ``2proc``: each row's plain case on 2 processes x 4 devices against 1 process x 8 and
  against the single-device reference."""
  multiproc.launch(out_path, row_names)
  two = multiproc.load(out_path, row_names)
  out = []
  for r in row_names:
    one = ROWS[r].run(CASES["plain"], mesh, {"step": 0})
    vs_one = max(cells.leaf_err(a, b) for a, b in zip(two[r], jax.tree.leaves(one.sharded)))
    as_tree = jax.tree.unflatten(jax.tree.structure(one.reference), two[r])
    err = cells.rel_err(as_tree, one.reference, one.initial)
    ok = err <= one.tol and vs_one <= 1e-5
    out.append(cells.Cell(r, "2proc", "exact" if ok else "SILENT", err=err, tol=one.tol,
                          message=f"vs 1x8: {vs_one:.1e}"))
  return out


def markdown(table, row_names, case_names) -> str:
  by = {(c.row, c.case): c for c in table}
  lines = ["| transformation | " + " | ".join(case_names) + " |", "|---" * (len(case_names) + 1) + "|"]
  for r in row_names:
    lines.append(f"| {r} | " + " | ".join(by[(r, c)].text().replace("|", "/") for c in case_names) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--markdown", action="store_true")
  parser.add_argument("--two_process", action="store_true", help="add the 2 processes x 4 devices column")
  parser.add_argument("--floor", action="store_true", help="print the bf16 row-order floor and exit")
  args = parser.parse_args(argv)
  rows, cases = args.rows.split(","), args.cases.split(",")
  if args.floor:
    from proving_ground import references
    print(f"bf16 row-order floor: {references.bf16_row_order_floor():.2e} (tolerance {BF16_TOL:.2e})")
    return 0
  mesh = spmd.make_mesh()
  table = run_table(rows, cases, mesh, log=print)
  if args.two_process:
    column = two_process_column(rows, mesh)
    for cell in column:
      print(f"{cell.row:<30} {'2proc':<12} {cell.text()}")
    table += column
    cases = cases + ["2proc"]
  if args.markdown:
    print(markdown(table, rows, cases))
  assert "common" not in sys.modules, "the proving ground must not import the harness"
  bad = [c for c in table if c.status in ("SILENT", "CRASH")]
  print(f"{len(table)} cells: " + ", ".join(f"{s} {sum(c.status == s for c in table)}"
                                           for s in ("exact", "refused", "n/a", "SILENT", "CRASH")))
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
