"""The aiomemif exception tree. Every error the library raises derives from :class:`MemifError`.

::

    MemifError
    ├── ConfigurationError (also ValueError)      a bad argument or configuration
    ├── PacketTooLargeError (also ValueError)     a packet that no buffer chain can carry
    ├── EmptyPacketError (also ValueError)        a packet of 0 bytes (memif has none)
    ├── ProtocolError
    │   ├── RemoteProtocolError                   the peer broke the protocol (has .reason),
    │   │                                         during the handshake or after link-up
    │   │   └── ResourceError                     a region or eventfd from the peer is unusable
    │   └── LocalProtocolError                    we were asked to break the protocol
    ├── DisconnectedError                         the link is down (has .reason)
    │   ├── PeerDisconnectedError                 the peer sent DISCONNECT (its reason)
    │   │   └── HandshakeRefusedError             ... while we were handshaking (rejected)
    │   └── ConnectionLostError                   EOF or socket error without DISCONNECT
    ├── ClosedResourceError                       used after we closed it
    ├── BusyResourceError                         two consumers on one queue
    ├── WouldBlockError                           a non-waiting call found no room / no data
    ├── StaleBatchError                           a released batch was used
    ├── ExportedBufferError (also BufferError)    a view is still exported: not given up
    ├── HandshakeTimeoutError (also TimeoutError) the peer stopped answering mid-handshake
    └── MemifOSError (also OSError)               a system call failed (has .errno)
        └── AddressInUseError                     a live listener or a non-socket at the path
"""

from __future__ import annotations

__all__ = [
    "AddressInUseError",
    "BusyResourceError",
    "ClosedResourceError",
    "ConfigurationError",
    "ConnectionLostError",
    "DisconnectedError",
    "EmptyPacketError",
    "ExportedBufferError",
    "HandshakeRefusedError",
    "HandshakeTimeoutError",
    "LocalProtocolError",
    "MemifError",
    "MemifOSError",
    "PacketTooLargeError",
    "PeerDisconnectedError",
    "ProtocolError",
    "RemoteProtocolError",
    "ResourceError",
    "StaleBatchError",
    "WouldBlockError",
]


class MemifError(Exception):
    """Root of every exception aiomemif raises."""


class ConfigurationError(MemifError, ValueError):
    """An argument or configuration value is invalid (libmemif ``MEMIF_ERR_INVAL_ARG``)."""


class PacketTooLargeError(MemifError, ValueError):
    """A packet is larger than what the transmit ring can carry."""


class EmptyPacketError(MemifError, ValueError):
    """A packet of 0 bytes was given to send (a memif descriptor carries 1..65535)."""


class ProtocolError(MemifError):
    """The memif protocol was violated."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    ``reason`` is the text aiomemif puts in the DISCONNECT it sends before closing.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ResourceError(RemoteProtocolError):
    """A region fd or interrupt fd received from the peer failed its checks."""


class LocalProtocolError(ProtocolError):
    """This side was asked to do something the protocol forbids (a bug in the caller)."""


class DisconnectedError(MemifError):
    """The link is down. ``reason`` says why (the peer's DISCONNECT text where there was one)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerDisconnectedError(DisconnectedError):
    """The peer sent DISCONNECT (libmemif ``MEMIF_ERR_DISCONNECT``)."""


class HandshakeRefusedError(PeerDisconnectedError):
    """The peer refused our handshake with DISCONNECT; ``reason`` is its text.

    Examples: ``"Incorrect secret"``, ``"ID not found"``, ``"Only ethernet mode supported"``.
    """


class ConnectionLostError(DisconnectedError):
    """The control socket closed or failed without a DISCONNECT (``MEMIF_ERR_DISCONNECTED``)."""


class ClosedResourceError(MemifError):
    """The connection, queue or server was closed by this side (``MEMIF_ERR_NOCONN``)."""


class BusyResourceError(MemifError):
    """Another task is already receiving from (or sending on) this queue."""


class WouldBlockError(MemifError):
    """A non-waiting call could not proceed: ring full (``MEMIF_ERR_NOBUF_RING``) or empty."""


class StaleBatchError(MemifError):
    """A received batch was used after it was released and its buffers returned to the ring."""


class ExportedBufferError(MemifError, BufferError):
    """A view was still exported when its buffer was to be given up.

    Raised by ``Batch.release`` (and the receive that releases the previous batch),
    ``TxQueue.commit``, ``cancel`` and ``forward`` when a packet's view is held through the
    buffer protocol by another object (``numpy.frombuffer(view)``, a ``ctypes``
    ``from_buffer``, a ``pickle.PickleBuffer``...). Python cannot revoke such an export:
    the memory would stay readable and writable while the peer reuses the buffer. So
    nothing is given up; drop those objects and call again. ``indices`` are the packets
    (batch or reservation positions) whose views are still exported.
    """

    def __init__(self, message: str, indices: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.indices = indices


class HandshakeTimeoutError(MemifError, TimeoutError):
    """The peer did not complete the handshake in time."""


class MemifOSError(MemifError, OSError):
    """A system call failed; ``errno`` and ``strerror`` are those of the underlying OSError."""


class AddressInUseError(MemifOSError):
    """The socket address is held by a live listener, or the path is not a socket."""
