"""Online logistic regression with per-feature adaptive step sizes (AdaGrad).

Plain SGD gives every hashed feature the same step, so rare, telling tokens learn as
slowly as ``hdr:received``. AdaGrad divides each step by the root of that feature's
accumulated squared gradients: a token seen for the first time moves at full speed, a
common one settles. On spam streams this is what lets one reported message matter.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from mailsift.models.estimator import EstimatorMixin, csr_rows, row

__all__ = ["OnlineLogistic", "sigmoid"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
_MAX_LOGIT = 35.0


def sigmoid(z: float) -> float:
    """Logistic function, clipped so it never overflows."""
    return 1.0 / (1.0 + math.exp(-max(-_MAX_LOGIT, min(_MAX_LOGIT, z))))


class OnlineLogistic(EstimatorMixin):
    """Logistic-loss linear model over hashed features, trained one message at a time.

    >>> import numpy as np
    >>> m = OnlineLogistic(n_features=16)
    >>> idx, val = np.array([1, 2]), np.array([0.7, 0.7], dtype=np.float32)
    >>> _ = m.learn_one(idx, val, 1)
    >>> m.decision_one(idx, val) > 0
    True
    """

    def __init__(
        self,
        n_features: int = 2**20,
        learning_rate: float = 2.0,
        initial_accumulator: float = 0.01,
    ) -> None:
        self.n_features = n_features
        self.learning_rate = learning_rate
        self.initial_accumulator = initial_accumulator
        self._init_state()

    def _init_state(self) -> None:
        self.coef_ = np.zeros(self.n_features, dtype=np.float32)
        self.grad_sq_ = np.full(self.n_features, self.initial_accumulator, dtype=np.float32)
        self.n_seen_ = 0

    def decision_one(self, idx: IntArray, val: FloatArray) -> float:
        """Log-odds of spam for one message (unique ``idx``, values ``val``)."""
        return float(self.coef_[idx] @ val)

    def learn_one(
        self, idx: IntArray, val: FloatArray, y: int, weight: float = 1.0
    ) -> OnlineLogistic:
        """One AdaGrad step on the logistic loss of one message; ``y`` is 1 for spam."""
        p = sigmoid(self.decision_one(idx, val))
        grad = ((p - y) * weight) * val
        acc = self.grad_sq_[idx] + grad * grad
        self.grad_sq_[idx] = acc
        self.coef_[idx] -= (self.learning_rate * grad / np.sqrt(acc)).astype(np.float32)
        self.n_seen_ += 1
        return self

    def partial_fit(self, X: Any, y: Any) -> OnlineLogistic:
        """Learn each row of a sparse matrix in order."""
        rows = csr_rows(X)
        for i, label in enumerate(np.asarray(y)):
            self.learn_one(*row(rows, i), int(label))
        return self

    def decision_function(self, X: Any) -> npt.NDArray[np.float64]:
        rows = csr_rows(X)
        return np.asarray(rows @ self.coef_, dtype=np.float64)

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        p = 1.0 / (1.0 + np.exp(-np.clip(self.decision_function(X), -_MAX_LOGIT, _MAX_LOGIT)))
        return np.column_stack([1.0 - p, p])
