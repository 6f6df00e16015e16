"""Helpers for testing code that uses aiomemif (and for aiomemif's own tests).

- :func:`memif_pair`: an async context manager yielding a connected server/client pair in
  this process (no VPP or DPDK needed).
- :mod:`aiomemif.testing.plugin`: the pytest plugin (``memif_socket_path`` and
  ``memif_pair`` fixtures), registered as ``aiomemif`` (``pytest -p aiomemif``).
- :mod:`aiomemif.testing.testpmd`: drive DPDK's ``dpdk-testpmd`` as a real C peer.
- :mod:`aiomemif.testing.vpp`: start and drive FD.io VPP (its memif plugin) as a peer.
- :mod:`aiomemif.testing.storm` and :mod:`aiomemif.testing.soak`: the peer-kill storm and
  the soak (``python -m aiomemif.testing.storm`` / ``.soak``), with their child peer
  (:mod:`~aiomemif.testing.child_peer`) and its handle (:mod:`~aiomemif.testing.children`).
"""

from .pair import MemifPair as MemifPair
from .pair import memif_pair as memif_pair

__all__ = ["MemifPair", "memif_pair"]
