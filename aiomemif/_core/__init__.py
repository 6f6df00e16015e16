"""The sans-IO core of aiomemif: everything about memif that is pure computation.

Wire structs and constants (``wire``), control messages (``messages``), the handshake
machines of both roles (``handshake``), the client's region layout (``layout``), the
configuration and details value objects (``config``, ``details``), received packets
(``buffers``), the one checker of peer descriptors (``descriptors``), the ring view
(``ring``) and the ring endpoints that receive (``rx``) and transmit (``tx``,
``client_tx``, ``server_tx``). Modules here take bytes, integers and memoryviews and return
values; fds travel through them as plain integers. They may import the standard library's
pure modules, ``attrs`` and :mod:`aiomemif.errors`, and nothing else: no ``asyncio``,
``socket``, ``os``, ``mmap``, ``select``, ``time`` or ``threading`` (a test and a ruff rule
enforce it), and nothing from ``aiomemif._os``, ``aiomemif._aio`` or the CLI.
"""
