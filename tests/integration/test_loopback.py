"""Loopback integration in one process: real Unix sockets, memfds and eventfds."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

import aiomemif
from aiomemif import InterfaceConfig, RxMode

SEQ = struct.Struct("<I")


def packet(seq: int, size: int = 64) -> bytes:
    return (SEQ.pack(seq) + bytes((seq + i) & 0xFF for i in range(size)))[:size]


async def transfer(
    tx: aiomemif.TxQueue, rx: aiomemif.RxQueue, count: int, size: int = 64, start: int = 0
) -> None:
    """Send ``count`` numbered packets on tx and check each arrives intact, in order, on rx."""
    sent = [packet(start + i, size) for i in range(count)]
    sender = asyncio.create_task(tx.send_batch(sent))
    got: list[bytes] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            batch = await rx.receive()
            got.extend(bytes(p) for p in batch)
        await sender
    assert got == sent


async def test_both_directions(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path) as client:
        server = await srv.accept()
        await transfer(client.tx_queues[0], server.rx_queues[0], 3000)
        await transfer(server.tx_queues[0], client.rx_queues[0], 3000, size=1500)
        assert client.tx_queues[0].counters.packets == 3000
        assert server.rx_queues[0].counters.bytes == 3000 * 64


async def test_several_queues_each_way(sock_path: str) -> None:
    cfg = InterfaceConfig(rx_queue_count=3, tx_queue_count=3, ring_size=64)
    async with aiomemif.serve(sock_path, [cfg]) as srv, aiomemif.connect(sock_path, cfg) as client:
        server = await srv.accept()
        assert len(client.tx_queues) == len(server.rx_queues) == 3
        assert len(client.rx_queues) == len(server.tx_queues) == 3
        for q in range(3):
            await transfer(client.tx_queues[q], server.rx_queues[q], 500, start=q * 1000)
            await transfer(server.tx_queues[q], client.rx_queues[q], 500, start=q * 1000)
        details = server.details()
        assert [q.packets for q in details.rx_queues] == [500, 500, 500]


async def test_client_asks_for_fewer_queues_than_server_allows(sock_path: str) -> None:
    async with aiomemif.serve(
        sock_path, [InterfaceConfig(rx_queue_count=4, tx_queue_count=4)]
    ) as srv:
        async with aiomemif.connect(sock_path, rx_queue_count=1, tx_queue_count=2) as client:
            server = await srv.accept()
            assert len(server.rx_queues) == 2 and len(server.tx_queues) == 1
            await transfer(client.tx_queues[1], server.rx_queues[1], 100)


async def test_client_asking_more_queues_gets_what_hello_allows(sock_path: str) -> None:
    # One interface: HELLO announces its counts, and the client asks for no more.
    cfg = InterfaceConfig(rx_queue_count=1, tx_queue_count=2)
    async with aiomemif.serve(sock_path, [cfg]) as srv:
        async with aiomemif.connect(sock_path, tx_queue_count=4, rx_queue_count=4) as client:
            server = await srv.accept()
            assert (len(client.tx_queues), len(client.rx_queues)) == (1, 2)
            assert (len(server.rx_queues), len(server.tx_queues)) == (1, 2)
            await transfer(client.tx_queues[0], server.rx_queues[0], 10)


async def test_refusal_names_the_interface_limit(sock_path: str) -> None:
    # HELLO announces the largest counts of all interfaces; interface 1 allows fewer.
    interfaces = [
        InterfaceConfig(interface_id=0, rx_queue_count=4),
        InterfaceConfig(interface_id=1),
    ]
    async with aiomemif.serve(sock_path, interfaces) as srv:
        reason = "Invalid ring index 1: interface 1 allows 1 s2m ring"
        with pytest.raises(aiomemif.HandshakeRefusedError) as info:
            await aiomemif.connect(sock_path, interface_id=1, tx_queue_count=2)
        assert info.value.reason == reason
        assert srv.failures[-1] == aiomemif.HandshakeFailure(1, reason)


async def test_several_interface_ids_on_one_socket(sock_path: str) -> None:
    interfaces = [
        InterfaceConfig(interface_id=0),
        InterfaceConfig(interface_id=7, secret="s3cret", rx_queue_count=2),
        InterfaceConfig(interface_id=9, mode=aiomemif.Mode.IP),
    ]
    async with aiomemif.serve(sock_path, interfaces) as srv:
        async with (
            aiomemif.connect(sock_path, interface_id=7, secret="s3cret", tx_queue_count=2) as c7,
            aiomemif.connect(sock_path, interface_id=9, mode=aiomemif.Mode.IP) as c9,
            aiomemif.connect(sock_path, interface_id=0) as c0,
        ):
            by_id = {}
            for _ in range(3):
                conn = await srv.accept()
                by_id[conn.interface_id] = conn
            assert sorted(by_id) == [0, 7, 9]
            assert by_id[9].config.mode is aiomemif.Mode.IP
            await transfer(c7.tx_queues[1], by_id[7].rx_queues[1], 50)
            await transfer(c9.tx_queues[0], by_id[9].rx_queues[0], 50, start=100)
            await transfer(by_id[0].tx_queues[0], c0.rx_queues[0], 50, start=200)
            assert set(srv.connections_by_id) == {0, 7, 9}


@pytest.mark.parametrize(
    ("client_kw", "reason"),
    [
        ({"secret": "wrong"}, "Incorrect secret"),
        ({}, "Secret required"),
        ({"secret": "s3cret-and-more"}, "Incorrect secret"),
        ({"interface_id": 5, "secret": "s3cret"}, "ID not found"),
        ({"mode": aiomemif.Mode.IP, "secret": "s3cret"}, "Mode mismatch"),
    ],
)
async def test_refused_handshakes(
    sock_path: str, client_kw: dict[str, object], reason: str
) -> None:
    async with aiomemif.serve(sock_path, [InterfaceConfig(secret="s3cret")]) as srv:
        with pytest.raises(aiomemif.HandshakeRefusedError) as info:
            await aiomemif.connect(sock_path, **client_kw)  # type: ignore[arg-type]  # settings
        assert info.value.reason == reason
        assert srv.failures[-1].reason == reason
        # The server keeps listening and the right secret still works.
        async with aiomemif.connect(sock_path, secret="s3cret"):
            await srv.accept()


async def test_secret_accepted_and_no_secret_server_accepts_any(
    sock_path: str, sock_dir: Path
) -> None:
    async with aiomemif.serve(sock_path, [InterfaceConfig(secret="x" * 23)]) as srv:
        async with aiomemif.connect(sock_path, secret="x" * 23):
            assert (await srv.accept()).details().secret_set
    other = str(sock_dir / "open.sock")
    async with aiomemif.serve(other) as srv, aiomemif.connect(other, secret="whatever"):
        await srv.accept()


async def test_already_connected_leaves_live_connection_alone(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path) as first:
        server = await srv.accept()
        with pytest.raises(aiomemif.HandshakeRefusedError, match="Already connected"):
            await aiomemif.connect(sock_path)
        assert first.is_up and server.is_up
        await transfer(first.tx_queues[0], server.rx_queues[0], 10)


async def test_id_is_free_again_after_disconnect(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv:
        for round_ in range(3):
            async with aiomemif.connect(sock_path) as client:
                server = await srv.accept()
                await transfer(client.tx_queues[0], server.rx_queues[0], 10, start=round_)
            reason = await server.wait_closed()
            assert isinstance(reason, aiomemif.PeerDisconnectedError)


async def test_peer_close_surfaces_reason_in_receive(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path) as client:
        server = await srv.accept()
        waiting = asyncio.create_task(client.rx_queues[0].receive())
        await asyncio.sleep(0.01)
        await server.aclose("maintenance window")
        with pytest.raises(aiomemif.PeerDisconnectedError) as info:
            await waiting
        assert info.value.reason == "maintenance window"
        assert not client.is_up
        with pytest.raises(aiomemif.PeerDisconnectedError):
            await client.tx_queues[0].send(b"x" * 60)


async def test_local_close_ends_iteration(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path) as client:
        await srv.accept()

        async def consume() -> int:
            n = 0
            async for batch in client.rx_queues[0]:
                n += len(batch)
            return n

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        await client.aclose()
        assert await task == 0
        with pytest.raises(aiomemif.ClosedResourceError):
            client.tx_queues[0].send_nowait(b"x" * 60)


async def test_abort_sends_nothing_peer_sees_connection_lost(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path) as client:
        server = await srv.accept()
        client.abort()
        err = await asyncio.wait_for(server.wait_closed(), 5)
        assert isinstance(err, aiomemif.ConnectionLostError)


async def test_server_close_disconnects_clients(sock_path: str) -> None:
    srv = aiomemif.serve(sock_path)
    await srv.start()
    client = await aiomemif.connect(sock_path)
    await srv.accept()
    await srv.aclose()
    err = await asyncio.wait_for(client.wait_closed(), 5)
    assert isinstance(err, aiomemif.PeerDisconnectedError)
    assert err.reason == "server closed"
    assert not os.path.exists(sock_path)
    await client.aclose()
    with pytest.raises(aiomemif.ClosedResourceError):
        await srv.accept()


async def test_stale_batch_raises(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path) as client:
        server = await srv.accept()
        await client.tx_queues[0].send_batch([packet(1), packet(2)])
        batch = await server.rx_queues[0].receive()
        view = batch[0]
        assert bytes(view) == packet(1)
        with batch:
            pass
        with pytest.raises(aiomemif.StaleBatchError):
            batch[0]
        with pytest.raises(ValueError, match="released"):
            bytes(view)
        # The next receive also releases an unreleased batch (and returns its buffers).
        await client.tx_queues[0].send_batch([packet(3)])
        b2 = await server.rx_queues[0].receive()
        await client.tx_queues[0].send_batch([packet(4)])
        b3 = await server.rx_queues[0].receive()
        assert b2.released and bytes(b3[0]) == packet(4)
        b3.release()
        assert server.details().rx_queues[0].tail == 4


async def test_full_ring_would_block_then_send_waits(sock_path: str) -> None:
    async with (
        aiomemif.serve(sock_path) as srv,
        aiomemif.connect(sock_path, ring_size=16) as client,
    ):
        server = await srv.accept()
        tx = client.tx_queues[0]
        assert tx.send_batch_nowait([packet(i) for i in range(20)]) == 16
        with pytest.raises(aiomemif.WouldBlockError):
            tx.send_nowait(packet(99))
        pending = asyncio.create_task(tx.send_batch([packet(i) for i in range(16, 40)]))
        got: list[bytes] = []
        async with asyncio.timeout(5):
            while len(got) < 40:
                batch = await server.rx_queues[0].receive()
                got.extend(bytes(p) for p in batch)
                batch.release()
        assert await pending == 24
        assert got == [packet(i) for i in range(40)]
        assert tx.counters.ring_full >= 2


async def test_packet_size_and_type_errors(sock_path: str) -> None:
    async with (
        aiomemif.serve(sock_path) as srv,
        aiomemif.connect(sock_path, buffer_size=128) as client,
    ):
        server = await srv.accept()
        with pytest.raises(aiomemif.PacketTooLargeError):
            await client.tx_queues[0].send(b"x" * 65536)
        with pytest.raises(aiomemif.EmptyPacketError, match="empty packet"):
            await client.tx_queues[0].send(b"")
        with pytest.raises(aiomemif.EmptyPacketError):
            await server.tx_queues[0].send_batch([b"ok", b""])
        with pytest.raises(ValueError, match="empty packet"):  # still a ValueError
            client.tx_queues[0].send_nowait(bytearray())
        with pytest.raises(TypeError):
            await client.tx_queues[0].send(12345)  # type: ignore[arg-type]
        with pytest.raises(aiomemif.PacketTooLargeError):
            await server.tx_queues[0].send(b"y" * 65536)
        assert client.tx_queues[0].counters.packets == 0


async def test_send_accepts_buffers_and_dunder_bytes(sock_path: str) -> None:
    class Scapyish:
        def __bytes__(self) -> bytes:
            return packet(5)

    import array

    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path) as client:
        server = await srv.accept()
        items: list[Any] = [
            packet(1),
            bytearray(packet(2)),
            memoryview(packet(3)),
            array.array("H", packet(4)),
            Scapyish(),
        ]
        await client.tx_queues[0].send_batch(items)
        batch = await server.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [packet(i) for i in range(1, 6)]


async def test_polling_mode_and_switching(sock_path: str) -> None:
    async with (
        aiomemif.serve(sock_path, rx_mode=RxMode.POLLING) as srv,
        aiomemif.connect(sock_path) as client,
    ):
        server = await srv.accept()
        rx = server.rx_queues[0]
        assert rx.mode is RxMode.POLLING
        assert server.details().rx_queues[0].flags & 1  # MASK_INT set: do not signal me
        await transfer(client.tx_queues[0], rx, 100)
        assert client.tx_queues[0].counters.interrupts_sent == 0
        rx.set_mode(RxMode.INTERRUPT)
        assert server.details().rx_queues[0].flags & 1 == 0
        await transfer(client.tx_queues[0], rx, 100, start=100)
        assert client.tx_queues[0].counters.interrupts_sent > 0


async def test_interrupt_mode_sleeps_instead_of_spinning(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path) as client:
        server = await srv.accept()
        rx = client.rx_queues[0]
        waiting = asyncio.create_task(rx.receive())
        await asyncio.sleep(0.05)
        assert rx.interrupt_sleeps == 1  # one wait, no polling loop
        await server.tx_queues[0].send(packet(1))
        batch = await asyncio.wait_for(waiting, 5)
        assert bytes(batch[0]) == packet(1)
        assert rx.counters.interrupts_received == 1
        assert rx.interrupt_sleeps == 1


async def test_busy_receiver(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path) as client:
        await srv.accept()
        first = asyncio.create_task(client.rx_queues[0].receive())
        await asyncio.sleep(0)
        with pytest.raises(aiomemif.BusyResourceError):
            await client.rx_queues[0].receive()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_details_and_json(sock_path: str) -> None:
    cfg = InterfaceConfig(interface_id=3, ring_size=256, app_name="unit", interface_name="eth-m")
    async with aiomemif.serve(sock_path, [cfg], app_name="srv-app") as srv:
        async with aiomemif.connect(sock_path, cfg) as client:
            server = await srv.accept()
            d = client.details()
            assert d.role is aiomemif.Role.CLIENT and d.link_up
            assert d.peer_app_name == "srv-app" and d.peer_interface_name == "eth-m"
            assert d.rx_queues[0].ring_size == 256 and d.rx_queues[0].head == 256
            assert d.regions[0].size == (2 * (128 + 16 * 256) + 2 * 256 * 2048)
            s = server.details()
            assert s.role is aiomemif.Role.SERVER and s.peer_app_name == "unit"
            assert s.interface_id == 3 and not s.secret_set
            text = json.dumps(s.as_dict())
            assert '"role": "server"' in text
        assert not client.details().link_up


async def test_abstract_socket_address() -> None:
    name = f"@aiomemif-test-{os.getpid()}-{id(object())}"
    async with aiomemif.serve(name) as srv, aiomemif.connect(name) as client:
        server = await srv.accept()
        await transfer(client.tx_queues[0], server.rx_queues[0], 10)
        assert server.details().socket_address == name


async def test_stale_socket_replaced_live_one_and_non_socket_refused(
    sock_path: str, sock_dir: Path
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens: stale
    async with aiomemif.serve(sock_path):
        with pytest.raises(aiomemif.AddressInUseError, match="live listener"):
            await aiomemif.serve(sock_path).start()
    plain = sock_dir / "plain-file"
    plain.write_text("not a socket")
    with pytest.raises(aiomemif.AddressInUseError, match="not a socket"):
        await aiomemif.serve(str(plain)).start()
    assert plain.read_text() == "not a socket"


async def test_connect_errors_are_memif_os_errors(sock_path: str) -> None:
    with pytest.raises(aiomemif.MemifOSError) as info:
        await aiomemif.connect(sock_path)
    assert isinstance(info.value, FileNotFoundError | OSError)
    with pytest.raises(aiomemif.ConfigurationError):
        aiomemif.connect(sock_path, ring_size=1000)
    with pytest.raises(aiomemif.ConfigurationError):
        aiomemif.connect(sock_path, secret="x" * 24)
    with pytest.raises(aiomemif.ConfigurationError):
        aiomemif.connect("")


async def test_client_reconnects_after_disconnect(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.01, maximum=0.05)
    async with (
        aiomemif.serve(sock_path) as srv,
        aiomemif.Client(sock_path, reconnect=policy) as client,
    ):
        seen = 0
        async with asyncio.timeout(10):
            async for conn in client.connections():
                server = await srv.accept()
                await transfer(conn.tx_queues[0], server.rx_queues[0], 20, start=seen)
                seen += 1
                if seen == 3:
                    break
                await server.aclose("go away")  # the client comes back by itself
                await conn.wait_closed()
        assert isinstance(client.last_error, aiomemif.PeerDisconnectedError)


async def test_client_waits_for_server_to_appear(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.01, maximum=0.02)
    async with aiomemif.Client(sock_path, reconnect=policy) as client:
        await asyncio.sleep(0.05)
        assert isinstance(client.last_error, aiomemif.MemifOSError)
        async with aiomemif.serve(sock_path) as srv:
            conn = await asyncio.wait_for(client.wait_connected(), 5)
            server = await srv.accept()
            await transfer(server.tx_queues[0], conn.rx_queues[0], 10)


async def test_client_gives_up_after_attempts(sock_path: str) -> None:
    policy = aiomemif.ReconnectPolicy(initial=0.001, attempts=3)
    async with aiomemif.Client(sock_path, reconnect=policy) as client:
        with pytest.raises(aiomemif.MemifOSError):
            async for _ in client.connections():
                pass


async def test_cancel_connect_at_every_stage(sock_path: str) -> None:
    """Cancel a connect after 0, 1, 2, ... loop iterations: nothing may leak or stay bound."""
    async with aiomemif.serve(sock_path) as srv:
        for k in range(40):
            task = asyncio.ensure_future(aiomemif.connect(sock_path))
            for _ in range(k):
                await asyncio.sleep(0)
            task.cancel()
            try:
                conn = await task
            except asyncio.CancelledError:
                continue
            await conn.aclose()
            break
        else:
            pytest.fail("the handshake never completed within 40 loop iterations")
        # Whatever the server saw, the id comes free again and a full handshake works.
        async with asyncio.timeout(5):
            while srv.connections_by_id:
                await asyncio.sleep(0.01)
            async with aiomemif.connect(sock_path) as client:
                server = await srv.accept()
                await transfer(client.tx_queues[0], server.rx_queues[0], 10)


async def test_cancel_waiting_send_and_receive(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path, ring_size=8) as client:
        server = await srv.accept()
        sending = asyncio.create_task(
            client.tx_queues[0].send_batch([packet(i) for i in range(20)])
        )
        receiving = asyncio.create_task(client.rx_queues[0].receive())
        await asyncio.sleep(0.02)
        sending.cancel()
        receiving.cancel()
        for t in (sending, receiving):
            with pytest.raises(asyncio.CancelledError):
                await t
        batch = await server.rx_queues[0].receive()
        assert [bytes(p) for p in batch] == [packet(i) for i in range(8)]
