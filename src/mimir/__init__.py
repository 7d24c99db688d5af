"""Mimir: a code research server for AI assistants, built on Lens."""

__version__ = "0.1.0"
