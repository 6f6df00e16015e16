"""Helpers shared by the test tiers (importable as ``support``; pytest puts ``tests/`` on
``sys.path``): the shared-memory rig (``rig``), loopback links (``links``), the scripted
raw-socket peer (``hostile``) and links to it (``hostile_links``), dpdk-testpmd helpers
(``dpdk``) and what the leak checks count (``leaks``). No test module imports another.
"""

from __future__ import annotations
