"""nhr: an open implementation of the NoHumansRequired image-editing triplet miner."""

from nhr.allocators import configure as _configure_allocators

__version__ = "0.1.0"

# before anything loads pyarrow: allocators that give freed memory back (nhr.allocators)
_configure_allocators()
