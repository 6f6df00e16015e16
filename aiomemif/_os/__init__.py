"""The OS-resource layer: fds, memfd regions and their mappings, eventfds, the control
socket with SCM_RIGHTS, and the registry of fds watched by the event loop.

``fds`` (ownership helpers, classification of received fds), ``fdinfo`` (what
``/proc/self/fdinfo`` says of a received eventfd: semaphore or not), ``regions`` (memfd regions,
mappings, the store-load fence), ``eventfd`` (signal and drain that never block),
``channel`` (the SOCK_SEQPACKET control channel, addresses, the listener) and ``readers``
(the only place that calls ``loop.add_reader``). These modules make system calls and may
import :mod:`aiomemif._core` and :mod:`aiomemif.errors`; only ``readers`` and the awaitable
socket helpers in ``channel`` touch asyncio. Nothing here imports :mod:`aiomemif._aio`.
"""
