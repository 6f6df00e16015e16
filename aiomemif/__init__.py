"""aiomemif: asyncio-native, pure-Python memif (shared-memory packet interface, protocol 2.0).

Client (slave)::

    async with aiomemif.connect("/run/vpp/memif.sock", interface_id=0) as conn:
        async for batch in conn.rx_queues[0]:
            await conn.tx_queues[0].send_batch(batch)

Server (master)::

    async with aiomemif.serve("/tmp/app.sock", [aiomemif.InterfaceConfig(interface_id=0)]) as srv:
        conn = await srv.accept()
"""

from __future__ import annotations

from ._aio.batch import Batch as Batch
from ._aio.client import Client as Client
from ._aio.client import ConnectContext as ConnectContext
from ._aio.client import ReconnectPolicy as ReconnectPolicy
from ._aio.client import connect as connect
from ._aio.connection import Connection as Connection
from ._aio.events import HandshakeFailure as HandshakeFailure
from ._aio.events import LinkEvent as LinkEvent
from ._aio.events import ServerEvent as ServerEvent
from ._aio.receive_all import ReceiveAll as ReceiveAll
from ._aio.rx_queue import RxMode as RxMode
from ._aio.rx_queue import RxQueue as RxQueue
from ._aio.server import Server as Server
from ._aio.server import serve as serve
from ._aio.tx_queue import TxBuffer as TxBuffer
from ._aio.tx_queue import TxBuffers as TxBuffers
from ._aio.tx_queue import TxQueue as TxQueue
from ._core.buffers import ChainedPacket as ChainedPacket
from ._core.buffers import Packet as Packet
from ._core.config import InterfaceConfig as InterfaceConfig
from ._core.details import ConnectionDetails as ConnectionDetails
from ._core.details import QueueDetails as QueueDetails
from ._core.details import RegionDetails as RegionDetails
from ._core.layout import RegionLayout as RegionLayout
from ._core.wire import Mode as Mode
from ._core.wire import Role as Role
from .errors import AddressInUseError as AddressInUseError
from .errors import BusyResourceError as BusyResourceError
from .errors import ClosedResourceError as ClosedResourceError
from .errors import ConfigurationError as ConfigurationError
from .errors import ConnectionLostError as ConnectionLostError
from .errors import DisconnectedError as DisconnectedError
from .errors import EmptyPacketError as EmptyPacketError
from .errors import ExportedBufferError as ExportedBufferError
from .errors import HandshakeRefusedError as HandshakeRefusedError
from .errors import HandshakeTimeoutError as HandshakeTimeoutError
from .errors import LocalProtocolError as LocalProtocolError
from .errors import MemifError as MemifError
from .errors import MemifOSError as MemifOSError
from .errors import PacketTooLargeError as PacketTooLargeError
from .errors import PeerDisconnectedError as PeerDisconnectedError
from .errors import ProtocolError as ProtocolError
from .errors import RemoteProtocolError as RemoteProtocolError
from .errors import ResourceError as ResourceError
from .errors import StaleBatchError as StaleBatchError
from .errors import WouldBlockError as WouldBlockError

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "ChainedPacket",
    "Client",
    "ConnectContext",
    "Connection",
    "ConnectionDetails",
    "HandshakeFailure",
    "InterfaceConfig",
    "LinkEvent",
    "Mode",
    "Packet",
    "QueueDetails",
    "ReceiveAll",
    "ReconnectPolicy",
    "RegionDetails",
    "RegionLayout",
    "Role",
    "RxMode",
    "RxQueue",
    "Server",
    "ServerEvent",
    "TxBuffer",
    "TxBuffers",
    "TxQueue",
    "__version__",
    "connect",
    "serve",
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
