"""Hyperparameters of the released DHO2 v2 code ([P2]/[C2], github ShunxianGu/DHO2, DHO2_ADMM_v2.py)."""


def dho2_v2_code() -> dict:
  """k=16, l=0, m=64, alpha=0.028, EMA momentum 0.9, c_max=1, Adam lr 2.8e-3, shift/penalty
  sigma=5e-9, refresh and ADMM period = 8 epochs (first refresh at call 0: warmup 1)."""
  return dict(k=16, l=0, m=64, alpha=0.028, momentum="ema", decay=0.9, scale_clip=1.0,
              eig_shift=5e-9, admm="reference", admm_sigma=5e-9, base="adam", base_lr=2.8e-3,
              period_epochs=8, warmup=1)
