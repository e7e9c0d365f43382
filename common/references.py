"""Reference problems with independently computed optima (scikit-learn), shared by tests and benchmarks."""
from __future__ import annotations

import numpy as np


def breast_cancer_elastic_net(l1: float, l2: float):
  """vr_prox spec problem B: X = normalize(StandardScaler(breast_cancer)) (569 x 30, unit rows),
  y = ±1, no intercept, P(w) = mean log(1 + exp(−y a·w)) + l1‖w‖₁ + (l2/2)‖w‖².

  Returns ``(x, y, w_star)`` with w* from sklearn's saga solver at C = 1/(n(l1 + l2)).
  """
  from sklearn.datasets import load_breast_cancer
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler, normalize
  d = load_breast_cancer()
  x = normalize(StandardScaler().fit_transform(d.data))
  y = np.where(d.target == 1, 1.0, -1.0)
  clf = LogisticRegression(C=1 / (len(y) * (l1 + l2)), l1_ratio=l1 / (l1 + l2), solver="saga",
                           fit_intercept=False, tol=1e-12, max_iter=200000).fit(x, y)
  return x, y, clf.coef_.ravel()
