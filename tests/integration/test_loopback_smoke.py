import aiomemif


async def test_smoke(sock_path: str) -> None:
    async with aiomemif.serve(sock_path) as srv, aiomemif.connect(sock_path) as c:
        s = await srv.accept()
        await c.tx_queues[0].send_batch([b"x" * 60] * 100)
        n = 0
        async for b in s.rx_queues[0]:
            n += len(b)
            if n >= 100:
                break
        assert n == 100
