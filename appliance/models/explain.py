"""Why a model said what it said: occlusion, one model call for many rows.

Every feature in turn is set to its training median (from the model's
reference distributions) and the drop in probability is that feature's
contribution; the ``top`` largest are a prediction's factors.  All rows and all
their occluded copies go through the model in one call per block of rows.
Cost: rows × features model rows per call.
"""

from __future__ import annotations

import numpy as np

from appliance.messages import Factor
from appliance.models.contract import LoadedModel

#: Rows explained per model call (bounds the occluded copies to ~0.6 MB at 67 features).
EXPLAIN_BLOCK = 32


class Explainer:
    """The occlusion explanation of one model's predictions."""

    def __init__(self, model: LoadedModel, top: int) -> None:
        self.model = model
        self.top = top
        self.medians = np.array([model.reference.get(n, {}).get("median", np.nan)
                                 for n in model.feature_names], dtype=np.float32)

    def factors(self, X: np.ndarray, proba: np.ndarray) -> list[tuple[Factor, ...]]:
        """The top factors of each row of ``X`` (model input order) given its probability."""
        if self.top == 0:
            return [() for _ in range(len(X))]
        n, f = X.shape
        names = self.model.feature_names
        diag = np.arange(f)
        out = []
        # Occluded copies in blocks: n × f × f floats at once would be tens of MB.
        for start in range(0, n, EXPLAIN_BLOCK):
            block = X[start:start + EXPLAIN_BLOCK]
            m = len(block)
            occluded = np.repeat(block, f, axis=0).reshape(m, f, f)
            occluded[:, diag, diag] = self.medians
            p = self.model.predict_proba(occluded.reshape(m * f, f)).reshape(m, f)
            contribution = proba[start:start + m, None] - p
            for i in range(m):
                top = np.argsort(-contribution[i])[:self.top]
                out.append(tuple(Factor(names[j], float(block[i, j]),
                                        float(contribution[i, j])) for j in top))
        return out
