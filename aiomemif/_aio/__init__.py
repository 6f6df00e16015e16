"""The asyncio layer: what users hold. Connections (``connection``), receive queues and
their batches (``rx_queue``, ``batch``, and ``receive_all`` over several queues),
transmit queues (``tx_queue``), the two roles (``client``, ``server``) and the events they
stream (``events``).

It pumps the core with what the OS layer reads: control messages into the handshake
machines, eventfd wake-ups into the ring endpoints. It may import :mod:`aiomemif._core`,
:mod:`aiomemif._os` and :mod:`aiomemif.errors`. Within it, imports go one way: client and
server build connections, connections own queues, and queues know the connection only
through the callbacks they were given.
"""
