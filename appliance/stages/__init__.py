"""The pipeline stages: one class per file, all with the interface of ``base.Stage``."""
