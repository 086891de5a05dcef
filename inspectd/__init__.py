"""inspectd: an edge inspection daemon for factory cameras."""

__version__ = "0.1.0"
