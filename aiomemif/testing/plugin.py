"""pytest plugin: fixtures for testing code that sends and receives packets over memif.

Installed with aiomemif and registered as ``aiomemif`` (load it explicitly with
``pytest -p aiomemif``). Every fixture is prefixed ``memif_`` and none is autouse, so the
plugin changes nothing for tests that do not ask for its fixtures.

``memif_socket_path``
    A fresh socket path in a private temporary directory (removed afterwards).
``memif_pair``
    An async fixture (pytest-asyncio, auto or strict mode) yielding a connected loopback
    :class:`~aiomemif.testing.MemifPair` (``.client``, ``.server``), closed afterwards with
    nothing leaked. Settings come from ``@pytest.mark.memif_pair(ring_size=256, ...)`` and/or
    indirect parametrization with a dict (or an ``InterfaceConfig``)::

        @pytest.mark.memif_pair(rx_queue_count=2, tx_queue_count=2, rx_mode=aiomemif.RxMode.POLLING)
        async def test_two_queues(memif_pair): ...

        @pytest.mark.parametrize("memif_pair", [{"ring_size": 64}], indirect=True)
        async def test_small_ring(memif_pair): ...
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

import pytest

from .. import InterfaceConfig
from .pair import MemifPair
from .pair import memif_pair as _open_pair

try:
    import pytest_asyncio
except ImportError:  # tested in a subprocess that hides pytest-asyncio
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = ["memif_pair", "memif_socket_path"]

_MARKER = (
    "memif_pair(**settings): settings for the memif_pair fixture "
    "(InterfaceConfig fields, and rx_mode=aiomemif.RxMode...)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)


@pytest.fixture
def memif_socket_path() -> Iterator[str]:
    """A fresh memif socket path in a private temporary directory (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="memif-") as tmp:
        yield os.path.join(tmp, "memif.sock")


def _pair_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings from the ``memif_pair`` marker, then from indirect parametrization."""
    settings: dict[str, Any] = {}
    marker = request.node.get_closest_marker("memif_pair")
    if marker is not None:
        if marker.args:
            raise pytest.UsageError("@pytest.mark.memif_pair takes keyword settings only")
        settings.update(marker.kwargs)
    param = getattr(request, "param", None)
    if isinstance(param, InterfaceConfig):
        settings["config"] = param
    elif isinstance(param, dict):
        settings.update(param)
    elif param is not None:
        raise pytest.UsageError(
            f"memif_pair parameters must be dicts of settings or InterfaceConfigs, got {param!r}"
        )
    if "config" in settings:
        # An InterfaceConfig replaces the field settings; rx_mode still applies.
        extra = set(settings) - {"config", "rx_mode"}
        if extra:
            raise pytest.UsageError(
                f"memif_pair got an InterfaceConfig and settings {sorted(extra)}; pass one"
            )
    return settings


async def _memif_pair(
    request: pytest.FixtureRequest, memif_socket_path: str
) -> AsyncIterator[MemifPair]:
    """A connected loopback memif pair (``.client``, ``.server``), closed afterwards.

    Configure it with ``@pytest.mark.memif_pair(**settings)`` or indirect parametrization
    (see :func:`aiomemif.testing.memif_pair` for the settings).
    """
    async with _open_pair(address=memif_socket_path, **_pair_settings(request)) as pair:
        yield pair


def _needs_pytest_asyncio(request: pytest.FixtureRequest) -> NoReturn:
    """A connected loopback memif pair: needs pytest-asyncio (not installed)."""
    pytest.fail(
        "the memif_pair fixture needs pytest-asyncio: pip install pytest-asyncio "
        "(or use aiomemif.testing.memif_pair() with your own event loop)",
        pytrace=False,
    )


# The plugin is loaded by every pytest run where aiomemif is installed, so it must import
# without pytest-asyncio; only the async fixture needs it.
memif_pair: object
if pytest_asyncio is not None:
    memif_pair = pytest_asyncio.fixture(_memif_pair, name="memif_pair")
else:
    memif_pair = pytest.fixture(_needs_pytest_asyncio, name="memif_pair")
