"""What a line engineer counts, one implementation for training, backtests and the
live scores of the service: labels of ticks (``labels``) and event metrics under
the alert stage's alarm rule (``metrics``).  Pure NumPy
(scikit-learn only for PR-AUC, which the live scores skip)."""
