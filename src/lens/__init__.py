"""Lens: a code search engine (index -> query -> serve) usable as a library, CLI and HTTP service."""

__version__ = "0.1.0"
