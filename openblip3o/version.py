"""The installed version, in a module of its own: a saved pipeline records it without importing the package root."""

__version__ = "0.1.0"
