"""A model's life in the service: the ONNX contract (``contract``), the folder of models
and which is active (``registry``), which model serves and watching for a new one
(``watcher``), and why a model said what it said (``explain``).  The starter model
ships here as ``starter.onnx``."""
