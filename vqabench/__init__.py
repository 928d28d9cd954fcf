"""vqabench: a plugin-based benchmark harness for VQA and CLIP-family vision-language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vqabench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def create_model(name: str, **kwargs):
    """A ready model (``vqabench.factory.create_model``); imported lazily, so ``import vqabench`` stays light."""
    from vqabench.factory import create_model as _create

    return _create(name, **kwargs)
