"""The pytest plugin (fixtures ``memif_socket_path`` and ``memif_pair``) and the
:func:`aiomemif.testing.memif_pair` helper behind it.

Plugin tests run an inner pytest session with pytester, loading the plugin the way users
do (``-p aiomemif`` once the entry point is installed).
"""

from __future__ import annotations

import asyncio
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import aiomemif
import aiomemif.testing

pytest_plugins = ["pytester"]

# Inner sessions run in this process, where aiomemif is already imported: `-p aiomemif`
# then cannot be assertion-rewritten (a warning a real `pytest -p aiomemif` never gives).
INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning
"""


def plugin_option() -> list[str]:
    """Load the plugin by its entry-point name once installed, else by module."""
    if entry_points(group="pytest11", name="aiomemif"):
        return ["-p", "aiomemif"]
    return ["-p", "aiomemif.testing.plugin"]


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner pytest session with the plugin (without plugins that only slow it down)."""
    quiet = ["-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider"]
    return pytester.runpytest(*plugin_option(), *quiet, *args)


def test_entry_point_names_the_plugin() -> None:
    found = entry_points(group="pytest11", name="aiomemif")
    if not found:
        reason = (
            "the pytest11 entry point 'aiomemif' is not installed (pyproject.toml "
            "[project.entry-points.pytest11], then reinstall)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    [ep] = found
    assert ep.value == "aiomemif.testing.plugin"


def test_fixtures_and_marker_are_registered(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    result = run_inner(pytester, "--fixtures")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*fixtures defined from aiomemif.testing.plugin*"])
    result.stdout.fnmatch_lines(["memif_socket_path -- *", "*fresh memif socket path*"])
    result.stdout.fnmatch_lines(["memif_pair -- *", "*connected loopback memif pair*"])
    result = run_inner(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.memif_pair(**settings): *"])


def test_no_fixture_is_autouse(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        def test_plain(request):
            assert [n for n in request.fixturenames if n.startswith("memif_")] == []

        async def test_plain_async(request):
            assert [n for n in request.fixturenames if n.startswith("memif_")] == []
        """
    )
    result = run_inner(pytester, "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=2)


INNER_TESTS = """
import os
import stat

import pytest

import aiomemif
from aiomemif.testing import MemifPair

seen = {}


def memfd_mappings():
    with open("/proc/self/maps") as f:
        return sum("/memfd:" in line for line in f)


def fd_count():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def nothing_leaked():
    # requested before memif_pair: set up before it and torn down after it
    fds, maps = fd_count(), memfd_mappings()
    yield
    pair = seen["pair"]
    assert not pair.client.is_up and not pair.server.is_up
    assert not os.path.exists(pair.address)
    assert memfd_mappings() == maps
    assert fd_count() <= fds


def test_socket_path(memif_socket_path):
    parent = os.path.dirname(memif_socket_path)
    assert os.path.isdir(parent) and not os.path.exists(memif_socket_path)
    assert stat.S_IMODE(os.stat(parent).st_mode) == 0o700
    assert len(memif_socket_path) < 100
    seen["path"] = memif_socket_path


def test_socket_path_is_fresh(memif_socket_path):
    assert memif_socket_path != seen["path"]
    assert not os.path.exists(os.path.dirname(seen["path"]))


@pytest.mark.asyncio
async def test_pair_carries_traffic(nothing_leaked, memif_pair, memif_socket_path):
    seen["pair"] = memif_pair
    assert isinstance(memif_pair, MemifPair)
    assert memif_pair.address == memif_socket_path
    assert memif_pair.client.role is aiomemif.Role.CLIENT
    assert memif_pair.server.role is aiomemif.Role.SERVER
    await memif_pair.client.tx_queues[0].send_batch([b"c" * 60] * 10)
    with await memif_pair.server.rx_queues[0].receive() as batch:
        assert [bytes(p) for p in batch] == [b"c" * 60] * 10
    await memif_pair.server.tx_queues[0].send(b"s" * 9000)
    with await memif_pair.client.rx_queues[0].receive() as batch:
        assert bytes(batch[0]) == b"s" * 9000


@pytest.mark.asyncio
@pytest.mark.memif_pair(interface_id=7, rx_queue_count=2, tx_queue_count=2, ring_size=64,
                        rx_mode=aiomemif.RxMode.POLLING)
async def test_marker_settings(memif_pair):
    details = memif_pair.client.details()
    assert details.interface_id == 7
    assert [q.ring_size for q in details.rx_queues] == [64, 64]
    assert len(memif_pair.server.tx_queues) == 2
    for conn in (memif_pair.client, memif_pair.server):
        assert {q.mode for q in conn.rx_queues} == {aiomemif.RxMode.POLLING}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "memif_pair",
    [{"secret": "s3cret"}, aiomemif.InterfaceConfig(interface_id=3, buffer_size=512)],
    indirect=True,
)
async def test_indirect_parametrization(memif_pair):
    if memif_pair.config.interface_id == 3:
        assert memif_pair.client.details().rx_queues[0].buffer_size == 512
    else:
        assert memif_pair.server.details().secret_set


@pytest.mark.asyncio
@pytest.mark.memif_pair(no_such_setting=1)
async def test_bad_setting(memif_pair):
    pass
"""


@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_fixtures_work(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(INNER_TESTS)
    result = run_inner(pytester, "-o", f"asyncio_mode={mode}")
    result.assert_outcomes(passed=6, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_bad_setting*", "*ConfigurationError*"])


def test_plugin_loads_without_pytest_asyncio(pytester: pytest.Pytester) -> None:
    """The plugin is loaded wherever aiomemif is installed: it must not need pytest-asyncio."""
    pytester.makepyfile(
        test_it="""
        import os

        def test_path(memif_socket_path):
            assert os.path.isdir(os.path.dirname(memif_socket_path))

        def test_pair(memif_pair):
            pass
        """
    )
    pytester.makepyfile(
        run_it=f"""
        import sys

        import pytest


        class HidePytestAsyncio:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "pytest_asyncio":
                    raise ImportError("pytest-asyncio is hidden")


        sys.meta_path.insert(0, HidePytestAsyncio())
        # --assert=plain: no rewriting import hook that would find pytest_asyncio first
        args = ["--assert=plain", "-p", "no:asyncio", "-p", "no:cacheprovider"]
        sys.exit(pytest.main([*args, *{plugin_option()!r}, "test_it.py"]))
        """
    )
    result = pytester.run(sys.executable, "run_it.py", timeout=30)
    result.assert_outcomes(passed=1, errors=1)  # memif_pair fails at set-up, saying why
    result.stdout.fnmatch_lines(["*the memif_pair fixture needs pytest-asyncio*"])


# -- the helper, used directly -------------------------------------------------------------


async def test_helper_pair_both_ways_then_closed() -> None:
    async with aiomemif.testing.memif_pair(
        rx_queue_count=2, tx_queue_count=2, ring_size=128
    ) as pair:
        assert pair.config.ring_size == 128
        for q in range(2):
            await pair.client.tx_queues[q].send(b"up%d" % q)
            await pair.server.tx_queues[q].send(b"down%d" % q)
        for q in range(2):
            with await pair.server.rx_queues[q].receive() as batch:
                assert bytes(batch[0]) == b"up%d" % q
            with await pair.client.rx_queues[q].receive() as batch:
                assert bytes(batch[0]) == b"down%d" % q
        address = pair.address
    assert not pair.client.is_up and not pair.server.is_up
    assert not Path(address).parent.exists()


async def test_helper_config_address_and_rx_mode(sock_path: str) -> None:
    config = aiomemif.InterfaceConfig(interface_id=5, app_name="mine")
    mode = aiomemif.RxMode.ADAPTIVE
    async with aiomemif.testing.memif_pair(config, address=sock_path, rx_mode=mode) as pair:
        assert pair.address == sock_path
        assert pair.client.peer_app_name == pair.server.peer_app_name == "mine"
        assert pair.server.interface_id == pair.client.interface_id == 5
        assert pair.client.rx_queues[0].mode is pair.server.rx_queues[0].mode is mode
        await pair.client.tx_queues[0].send(b"x" * 60)
        with await pair.server.rx_queues[0].receive() as batch:
            assert len(batch) == 1
    assert not Path(sock_path).exists()


async def test_helper_abstract_address() -> None:
    name = f"@aiomemif-test-{os.getpid()}-{id(asyncio.current_task())}"
    async with aiomemif.testing.memif_pair(address=name) as pair:
        assert pair.address == name
        assert pair.client.is_up


async def test_helper_closes_everything_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError, match="handler bug"):
        async with aiomemif.testing.memif_pair() as pair:
            raise RuntimeError("handler bug")
    assert not pair.client.is_up and not pair.server.is_up


async def test_helper_ends_a_receiving_task() -> None:
    async with aiomemif.testing.memif_pair() as pair:
        got_three = asyncio.Event()

        async def count() -> int:
            n = 0
            async for batch in pair.server.rx_queues[0]:
                n += len(batch)
                if n >= 3:
                    got_three.set()
            return n

        task = asyncio.create_task(count())
        await pair.client.tx_queues[0].send_batch([b"p" * 60] * 3)
        await asyncio.wait_for(got_three.wait(), 5)
    # leaving the block closed the server end first: its async for ended quietly
    assert await asyncio.wait_for(task, 5) == 3


async def test_helper_rejects_bad_settings() -> None:
    with pytest.raises(aiomemif.ConfigurationError, match="either config"):
        async with aiomemif.testing.memif_pair(aiomemif.InterfaceConfig(), ring_size=64):
            pass
    with pytest.raises(aiomemif.ConfigurationError, match="no_such_setting"):
        async with aiomemif.testing.memif_pair(no_such_setting=1):
            pass
    with pytest.raises(aiomemif.ConfigurationError, match="ring_size"):
        async with aiomemif.testing.memif_pair(ring_size=100):
            pass
