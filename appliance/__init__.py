"""appliance: predicts production-line faults about one hour before they happen."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("appliance")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
