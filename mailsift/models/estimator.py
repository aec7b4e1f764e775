"""The scikit-learn estimator contract, without importing scikit-learn.

Importing ``sklearn.base`` costs a serving worker ~60 MiB of RSS for two methods; this
mixin gives the same ``get_params`` / ``set_params`` (read from ``__init__``'s
signature), so the models still clone, grid-search and print like sklearn estimators.
"""

from __future__ import annotations

import inspect
from typing import Any, Self

import numpy as np
import numpy.typing as npt

__all__ = ["EstimatorMixin", "csr_rows"]


class EstimatorMixin:
    """Hyper-parameters are exactly ``__init__``'s arguments, stored under their names."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        unknown = set(params) - set(self._param_names())
        if unknown:
            raise ValueError(f"invalid parameters for {type(self).__name__}: {sorted(unknown)}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def csr_rows(X: Any, dtype: type = np.float32) -> Any:
    """Rows of a sparse matrix as CSR (scipy is imported only by the batch API)."""
    from scipy import sparse

    return sparse.csr_matrix(X, dtype=dtype)


def row(rows: Any, i: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    lo, hi = rows.indptr[i], rows.indptr[i + 1]
    return rows.indices[lo:hi].astype(np.int64), rows.data[lo:hi]
