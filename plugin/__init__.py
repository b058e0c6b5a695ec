"""sysmon-blt: Sysmon event ingestion, BLT embeddings and outlier detection."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sysmon-blt")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.1.0"
