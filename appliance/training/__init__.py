"""Training: labels, event metrics, fitting, and ONNX export under the model contract.

* ``labels``  — which prediction ticks are positive, and which are left out;
* ``metrics`` — alarm episodes and event metrics (recall, false alarms per
  asset-week, lead time), and the threshold choice built on them;
* ``train``   — feature matrices from history with the batch pipeline, the fit,
  the reference distributions;
* ``export``  — ONNX export with the metadata of ``models/README.md``;
* ``starter`` — ``python -m appliance.training.starter``: the demo's model from
  simulated history.
"""
