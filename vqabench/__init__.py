"""vqabench: a plugin-based benchmark harness for VQA and CLIP-family vision-language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vqabench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
