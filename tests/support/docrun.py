"""Run one documentation block (see ``support.docblocks`` for the directives) on the running
event loop, against an aiomemif peer when the block needs one.

A block is compiled with top-level await allowed (``ast.PyCF_ALLOW_TOP_LEVEL_AWAIT``), with
its line numbers shifted to the Markdown file's, so a traceback points at the doc. Two
rewrites happen before compiling: a statement ``asyncio.run(coro)`` at module level becomes
``await coro`` (the test's loop runs it, asyncio or uvloop, under the suite's checks), and
the string constant named by ``address=`` becomes the peer's private socket.

The peer is an aiomemif connection in the opposite role. Its script: send ``send`` test
frames, take them back (``echo``, compared byte for byte) or take ``receive`` frames from the
block, wait until the block has consumed what it sent (its transmit ring is free again) and
until the block printed ``wait``; then ``aclose()`` (DISCONNECT). A block looping on
``async for batch in rx`` thus ends when the peer closes; one looping on
``server.connections()`` ends when the harness closes that server (``stop=server``), which
it does only after the peer is done, so a pass means the block got that far.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomemif
from aiomemif.testing import MemifPair, memif_pair

from .docblocks import Block, Case, Directive

HANG_GUARD = 20.0  # seconds: a block or its peer stuck longer than this fails the test
PEER_NAME = "docs-peer"  # the peer's app name (what the block sees as peer_app_name)
CLOSE_REASON = "docs peer done"


def frames(count: int, size: int) -> list[bytes]:
    """Distinct test frames: Ethernet broadcast, EtherType 0x88B5, sequence, then filler."""
    out = []
    for seq in range(count):
        head = b"\xff" * 6 + bytes.fromhex("02d0c5000001") + struct.pack("!HI", 0x88B5, seq)
        out.append((head + bytes((seq + i) & 0xFF for i in range(size)))[:size])
    return out


class _Rewrite(ast.NodeTransformer):
    """``asyncio.run(x)`` statements at module level to ``await x``; the doc's address to
    the peer's."""

    def __init__(self, address: str | None, replacement: str | None) -> None:
        self.address, self.replacement = address, replacement
        self.replaced = 0

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        if self.address is not None and node.value == self.address:
            self.replaced += 1
            return ast.copy_location(ast.Constant(self.replacement), node)
        return node

    def module(self, tree: ast.Module) -> ast.Module:
        tree = self.visit(tree)
        tree.body = [self._statement(s) for s in tree.body]
        return tree

    def _statement(self, stmt: ast.stmt) -> ast.stmt:
        if isinstance(stmt, ast.If):  # if __name__ == "__main__": asyncio.run(main())
            stmt.body = [self._statement(s) for s in stmt.body]
            stmt.orelse = [self._statement(s) for s in stmt.orelse]
            return stmt
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name)
            and (call.func.value.id, call.func.attr) == ("asyncio", "run")
            and len(call.args) == 1
        ):
            return ast.copy_location(ast.Expr(ast.Await(call.args[0])), stmt)
        return stmt


def compile_block(block: Block, address: str | None = None) -> Any:
    """The block's code object (top-level await allowed, the doc's line numbers)."""
    d = block.directive
    tree = ast.parse(block.code, filename=str(block.path))
    ast.increment_lineno(tree, block.line - 1)
    rewrite = _Rewrite(d.address, address)
    tree = ast.fix_missing_locations(rewrite.module(tree))
    if d.address is not None and not rewrite.replaced:
        raise AssertionError(f"{block.where}: address {d.address!r} does not occur in the block")
    return compile(tree, str(block.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def run_code(code: Any, namespace: dict[str, Any]) -> None:
    result = eval(code, namespace)
    if inspect.CO_COROUTINE & code.co_flags:
        await result


def private_address(doc_address: str, tmp: Path) -> str:
    if doc_address.startswith(("@", "abstract:")):
        return f"@aiomemif-docs-{uuid.uuid4().hex}"
    return str(tmp / "docs.sock")


class Peer:
    """The other end: runs the directive's script on ``conn`` and closes it normally."""

    def __init__(self, d: Directive, out: io.StringIO) -> None:
        self.d, self.out = d, out
        self.sent = frames(d.send, d.size)
        self.stage = "starting"
        self.received: list[bytes] = []
        self.block: asyncio.Task[None] | None = None  # set once the block runs

    async def send(self, conn: aiomemif.Connection) -> None:
        if self.sent:
            self.stage = f"sending {len(self.sent)} frames"
            await conn.tx_queues[0].send_batch(self.sent)

    async def finish(self, conn: aiomemif.Connection) -> None:
        """Everything after sending, then DISCONNECT."""
        d, rx, tx = self.d, conn.rx_queues[0], conn.tx_queues[0]
        want = len(self.sent) if d.echo else d.receive
        while len(self.received) < want:
            self.stage = f"waiting for frames from the block ({len(self.received)}/{want})"
            with await rx.receive() as batch:
                self.received.extend(bytes(p) for p in batch)
        if d.echo:
            assert self.received == self.sent, "the block did not send our frames back"
        assert len(self.received) == want, f"the block sent {len(self.received)}, not {want}"
        ring_size = conn.details().tx_queues[0].ring_size
        while tx.free_slots() < ring_size:
            self.stage = "waiting for the block to consume our frames"
            await asyncio.sleep(0.001)
        if d.wait is not None:
            self.stage = f"waiting for the block to print {d.wait!r}"
            await wait_output(self.out, d.wait, self.block)
            assert d.wait in self.out.getvalue(), f"the block ended without printing {d.wait!r}"
        self.stage = "closing"
        await conn.aclose(CLOSE_REASON)
        self.stage = "closed"

    async def as_server(self, server: aiomemif.Server) -> None:
        self.stage = "waiting for the block to connect"
        async with await server.accept() as conn:
            await self.send(conn)
            await self.finish(conn)

    async def as_client(self, address: str, block: asyncio.Task[None]) -> None:
        self.stage = "connecting to the block's server"
        config = aiomemif.InterfaceConfig(interface_id=self.d.interface_id, app_name=PEER_NAME)
        while True:
            try:
                conn = await aiomemif.connect(address, config)
                break
            except aiomemif.MemifOSError:  # not listening yet
                if block.done():
                    if block.cancelled() or block.exception() is not None:
                        return  # the block failed: its error is the one to report
                    raise AssertionError("the block ended before the peer could connect") from None
                await asyncio.sleep(0.005)
        async with conn:
            await self.send(conn)
            await self.finish(conn)


def pair_names(pair: MemifPair) -> dict[str, Any]:
    """What ``with=pair`` binds: the client end is ``conn`` (it owns the buffers, so
    ``forward`` and headroom work there)."""
    conn = pair.client
    return {
        "aiomemif": aiomemif,
        "pair": pair,
        "conn": conn,
        "rx": conn.rx_queues[0],
        "tx": conn.tx_queues[0],
    }


async def wait_output(out: io.StringIO, text: str, block: asyncio.Task[None] | None) -> None:
    """Until the block printed ``text`` (or ended: then it never will)."""
    while text not in out.getvalue() and not (block is not None and block.done()):
        await asyncio.sleep(0.001)


async def run_case(case: Case, tmp: Path) -> str:
    """Run the blocks of ``case`` with their peer; return what they printed. Raises what
    the block raised, an AssertionError from the peer's checks, or TimeoutError naming
    where it hung."""
    d = case.directive
    out = io.StringIO()
    namespace: dict[str, Any] = {"__name__": "__main__"}
    peer = Peer(d, out)
    address = private_address(d.address, tmp) if d.address else None
    codes = [compile_block(b, address) for b in case.blocks]

    async def program() -> None:
        for code in codes:
            await run_code(code, namespace)

    async with contextlib.AsyncExitStack() as stack:
        peer_job: Callable[[asyncio.Task[None]], Any] | None = None
        if d.setup == "pair":
            pair = await stack.enter_async_context(memif_pair())
            namespace.update(pair_names(pair))
            async with asyncio.timeout(HANG_GUARD):
                await peer.send(pair.server)  # before the block starts: one batch
            if d.has_script:
                peer_job = lambda _block: peer.finish(pair.server)  # noqa: E731
        elif d.setup == "server":
            address = str(tmp / "docs.sock")
            server = await stack.enter_async_context(aiomemif.serve(address))
            namespace.update(aiomemif=aiomemif, server=server)
            peer_job = lambda block: peer.as_client(address, block)  # noqa: E731
        elif d.peer == "server":
            assert address is not None
            config = aiomemif.InterfaceConfig(interface_id=d.interface_id, app_name=PEER_NAME)
            server = await stack.enter_async_context(
                aiomemif.serve(address, [config], app_name=PEER_NAME)
            )
            peer_job = lambda _block: peer.as_server(server)  # noqa: E731
        elif d.peer == "client":
            assert address is not None
            peer_job = lambda block: peer.as_client(address, block)  # noqa: E731
        with contextlib.redirect_stdout(out):
            await _supervise(program, peer_job, peer, d, namespace, out)
    namespace.clear()
    return out.getvalue()


async def _supervise(
    program: Callable[[], Any],
    peer_job: Callable[[asyncio.Task[None]], Any] | None,
    peer: Peer,
    d: Directive,
    namespace: dict[str, Any],
    out: io.StringIO,
) -> None:
    block = peer.block = asyncio.create_task(program(), name="doc block")
    tasks = [block]
    stage = "running the block"
    try:
        async with asyncio.timeout(HANG_GUARD):
            if peer_job is not None:
                peer_task = asyncio.create_task(peer_job(block), name="doc peer")
                tasks.append(peer_task)
                stage = "the peer"
                # Until the peer is done; a block that fails meanwhile fails the test now.
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if block.done() and not peer_task.done() and block.exception() is not None:
                    await block
                await peer_task
            if d.output is not None:
                stage = f"waiting for the block to print {d.output!r}"
                await wait_output(out, d.output, block)
            if d.stop is not None:
                stage = f"closing {d.stop!r}"
                await namespace[d.stop].aclose()
            stage = "waiting for the block to end"
            await block
    except TimeoutError:
        where = f"{stage} ({peer.stage})" if stage == "the peer" else stage
        raise AssertionError(f"hung for {HANG_GUARD} s: {where}") from None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if d.output is not None:
        assert d.output in out.getvalue(), f"the block did not print {d.output!r}"
