"""The version of mmcore (``mmcore.__version__``), in a module of its own so that any module of
the core can read it without importing the package facade ``mmcore/__init__.py``."""

__version__ = "0.1.0"
