"""Online logistic regression with per-feature adaptive step sizes (AdaGrad).

Plain SGD gives every hashed feature the same step, so rare, telling tokens learn as
slowly as ``hdr:received``. AdaGrad divides each step by the root of that feature's
accumulated squared gradients: a token seen for the first time moves at full speed, a
common one settles. On spam streams this is what lets one reported message matter.

Unchecked, the same property lets one message move the model a long way: a token whose
messages were always scored right has gathered almost no squared gradient, so a single
wrong label moves it at full speed, and a step's norm can reach
``learning_rate * weight / sqrt(initial_accumulator)`` (30 log-odds for a spam, 120
for a ham at the ensemble's settings). Each step is therefore capped in L2 norm
(:meth:`OnlineLogistic.step_cap`): messages are L2-normalised, so by Cauchy-Schwarz no
message's log-odds can move by more than the cap, whatever taught the step.
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
_SHORTEN = 1.0 - 1e-6
"""A capped step is shortened a hair more, so float32 rounding cannot take it past the cap."""


def sigmoid(z: float) -> float:
    """Logistic function, clipped so it never overflows."""
    return 1.0 / (1.0 + math.exp(-max(-_MAX_LOGIT, min(_MAX_LOGIT, z))))


class OnlineLogistic(EstimatorMixin):
    """Logistic-loss linear model over hashed features, trained one message at a time.

    **How far one message moves the model.** Learning the ``k``-th message (``k`` =
    ``n_seen_ + 1``) changes ``coef_`` by a vector of L2 norm at most

        ``max_step * (1 + step_warmup / k)``

    (times ``cap_scale`` when the caller gives one), whatever its weight and label; so
    the log-odds of *any* message with an L2-normalised vector (every message of
    :func:`~mailsift.models.features.extract`) moves by at most that much. At the
    defaults: at most 3.0 once the model has learned many messages (3.6 after 20,000,
    4.5 after 8,000, 6 after 4,000); an untrained model, which has to be moved far to
    learn at all, is bounded more loosely (15 at the 1,000th message). ``max_step=None``
    removes the cap. The accumulator still gathers the full gradient of a capped step.

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
        max_step: float | None = 3.0,
        step_warmup: float = 4000.0,
    ) -> None:
        self.n_features = n_features
        self.learning_rate = learning_rate
        self.initial_accumulator = initial_accumulator
        self.max_step = max_step
        self.step_warmup = step_warmup
        self._init_state()

    def _init_state(self) -> None:
        self.coef_ = np.zeros(self.n_features, dtype=np.float32)
        self.grad_sq_ = np.full(self.n_features, self.initial_accumulator, dtype=np.float32)
        self.n_seen_ = 0

    def decision_one(self, idx: IntArray, val: FloatArray) -> float:
        """Log-odds of spam for one message (unique ``idx``, values ``val``)."""
        return float(self.coef_[idx] @ val)

    def learn_one(
        self, idx: IntArray, val: FloatArray, y: int, weight: float = 1.0, cap_scale: float = 1.0
    ) -> OnlineLogistic:
        """One AdaGrad step on the logistic loss of one message; ``y`` is 1 for spam.

        ``weight`` multiplies the gradient; the step is then shortened to
        :meth:`step_cap` of ``cap_scale`` when it is longer.
        """
        p = sigmoid(self.decision_one(idx, val))
        grad = ((p - y) * weight) * val
        acc = self.grad_sq_[idx] + grad * grad
        self.grad_sq_[idx] = acc
        step = (self.learning_rate * grad / np.sqrt(acc)).astype(np.float32)
        norm = float(np.sqrt(step @ step))
        cap = self.step_cap(cap_scale)
        if norm > cap:
            step *= np.float32(cap / norm * _SHORTEN)
        self.coef_[idx] -= step
        self.n_seen_ += 1
        return self

    def step_cap(self, cap_scale: float = 1.0) -> float:
        """Largest L2 norm of the change to ``coef_`` that learning the next message may make."""
        if self.max_step is None:
            return math.inf
        return cap_scale * self.max_step * (1.0 + self.step_warmup / (self.n_seen_ + 1))

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
