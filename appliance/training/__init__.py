"""Training and backtests, offline (a command, or a child process of the service);
labels and event metrics are ``appliance.scoring``'s, shared with the live scores:

* ``dataset`` — feature rows and labels of many assets, from the batch pipeline;
* ``families`` — the model families and their parameters;
* ``fit``     — the time split, the fit, the threshold, the reference distributions;
* ``export``  — ONNX export with the metadata of ``models/README.md``;
* ``verdict`` — whether a model or variant is usable, and the windows too short
  for the data: one judgement for ``train`` and ``backtest``;
* ``static_threshold`` — a tuned single-sensor limit, the baseline a model must beat;
* ``command`` — ``appliance train``: history from the database, fit, register;
* ``backtest`` and ``backtest_report`` — ``appliance backtest`` and its report;
* ``starter`` — ``python -m appliance.training.starter``: the starter model from
  simulated history.
"""
