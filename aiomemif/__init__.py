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

from ._wire import Mode as Mode
from ._wire import Role as Role
from .buffers import ChainedPacket as ChainedPacket
from .buffers import Packet as Packet
from .client import Client as Client
from .client import LinkEvent as LinkEvent
from .client import ReconnectPolicy as ReconnectPolicy
from .client import connect as connect
from .config import InterfaceConfig as InterfaceConfig
from .connection import Connection as Connection
from .details import ConnectionDetails as ConnectionDetails
from .details import QueueDetails as QueueDetails
from .details import RegionDetails as RegionDetails
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .layout import RegionLayout as RegionLayout
from .queues import Batch as Batch
from .queues import RxMode as RxMode
from .queues import RxQueue as RxQueue
from .server import HandshakeFailure as HandshakeFailure
from .server import Server as Server
from .server import serve as serve
from .txqueue import TxBuffer as TxBuffer
from .txqueue import TxBuffers as TxBuffers
from .txqueue import TxQueue as TxQueue

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "ChainedPacket",
    "Client",
    "Connection",
    "ConnectionDetails",
    "HandshakeFailure",
    "InterfaceConfig",
    "LinkEvent",
    "Mode",
    "Packet",
    "QueueDetails",
    "ReconnectPolicy",
    "RegionDetails",
    "RegionLayout",
    "Role",
    "RxMode",
    "RxQueue",
    "Server",
    "TxBuffer",
    "TxBuffers",
    "TxQueue",
    "__version__",
    "connect",
    "serve",
    *_errors_all,
]
