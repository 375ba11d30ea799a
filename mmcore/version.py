"""The version of mmcore (``mmcore.__version__``), in a module of its own so that any module of
the core can read it without importing the package facade ``mmcore/__init__.py``.

Read from the installed distribution's metadata: ``pyproject.toml`` is the one place the
version is written (each first-party plugin reads its own the same way).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("mmcore")
except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"
