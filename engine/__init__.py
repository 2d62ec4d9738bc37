"""buig: the Dutch bijstand (BUIG) distribution model on household microdata."""

__version__ = "0.1.0"
