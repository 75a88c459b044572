"""nhr: an open implementation of the NoHumansRequired image-editing triplet miner."""

__version__ = "0.1.0"
