"""The docs collector and harness themselves: directives parse strictly, and a block that
does not do what its directive says fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.docblocks import DirectiveError, blocks_in, cases, parse_directive
from support.docrun import run_case

REFLECT = """
import asyncio
import aiomemif


async def main() -> None:
    async with aiomemif.connect("/run/x.sock") as conn:
        async for batch in conn.rx_queues[0]:
            await conn.tx_queues[0].send_batch({what})


asyncio.run(main())
"""


def markdown(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return path


def fence(code: str, directive: str | None = None) -> str:
    head = f"<!-- run: {directive} -->\n" if directive else ""
    return f"{head}```python\n{code.strip()}\n```\n\ntext\n\n"


def test_blocks_and_lines(tmp_path: Path) -> None:
    doc = markdown(tmp_path, "# t\n\n" + fence("x = 1") + "```sh\nls\n```\n" + fence("y = 2"))
    found = blocks_in(doc)
    assert [(b.line, b.code) for b in found] == [(4, "x = 1\n"), (13, "y = 2\n")]


@pytest.mark.parametrize(
    "body",
    [
        "peer=server",  # no address
        "peer=both address=x",
        "sned=3",
        "skip",  # no reason
        'reason="x"',
        "echo",  # nothing to echo
        "with=pair peer=client address=x",
        "id=one",
        "continue send=2",
        'wait="unterminated',
    ],
)
def test_bad_directives_are_errors(body: str) -> None:
    with pytest.raises(DirectiveError):
        parse_directive(body)


def test_directive_must_precede_a_python_block(tmp_path: Path) -> None:
    for text in ("<!-- run: with=pair -->\nprose\n", "<!-- run: with=pair -->\n```sh\nls\n```\n"):
        with pytest.raises(DirectiveError):
            blocks_in(markdown(tmp_path, text))


def test_continue_joins_the_previous_block(tmp_path: Path) -> None:
    doc = markdown(tmp_path, fence("x = 1") + fence("assert x == 1", "continue"))
    [case] = cases([doc])
    assert case.id.endswith("doc.md:2+9")


async def test_blocks_that_continue_share_a_namespace(tmp_path: Path) -> None:
    first = fence("import asyncio\nx = await asyncio.sleep(0, 41)")
    doc = markdown(tmp_path, first + fence("print(x + 1)", "continue"))
    [case] = cases([doc])
    assert await run_case(case, tmp_path) == "42\n"


async def test_a_reflecting_block_passes(tmp_path: Path) -> None:
    code = REFLECT.format(what="batch")
    [case] = cases([markdown(tmp_path, fence(code, "peer=server address=/run/x.sock send=5 echo"))])
    await run_case(case, tmp_path)  # the peer got its frames back, and the loop ended


async def test_a_block_that_does_not_echo_fails(tmp_path: Path) -> None:
    code = REFLECT.format(what='[b"x" * 60] * len(batch)')
    [case] = cases([markdown(tmp_path, fence(code, "peer=server address=/run/x.sock send=5 echo"))])
    with pytest.raises(AssertionError, match="did not send our frames back"):
        await run_case(case, tmp_path)


async def test_the_address_must_occur_in_the_block(tmp_path: Path) -> None:
    code = REFLECT.format(what="batch")
    [case] = cases([markdown(tmp_path, fence(code, "peer=server address=/run/y.sock send=1"))])
    with pytest.raises(AssertionError, match="does not occur"):
        await run_case(case, tmp_path)


async def test_missing_output_fails(tmp_path: Path) -> None:
    [case] = cases([markdown(tmp_path, fence("print('hello')", 'output="goodbye"'))])
    with pytest.raises(AssertionError, match="goodbye"):
        await run_case(case, tmp_path)


async def test_a_server_block_that_never_prints_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("support.docrun.HANG_GUARD", 1.0)
    code = """
import aiomemif

async with aiomemif.serve("/run/s.sock") as server:
    async for conn in server.connections():
        pass
"""
    directive = 'peer=client address=/run/s.sock wait="0 docs-peer" stop=server'
    [case] = cases([markdown(tmp_path, fence(code, directive))])
    with pytest.raises(AssertionError, match="hung"):
        await run_case(case, tmp_path)


async def test_a_hanging_block_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("support.docrun.HANG_GUARD", 0.2)
    [case] = cases([markdown(tmp_path, fence("import asyncio\nawait asyncio.Event().wait()"))])
    with pytest.raises(AssertionError, match="hung"):
        await run_case(case, tmp_path)


async def test_a_block_error_names_the_doc_line(tmp_path: Path) -> None:
    doc = markdown(tmp_path, "intro\n\n" + fence("x = 1\nundefined_name"))
    [case] = cases([doc])
    with pytest.raises(NameError) as info:
        await run_case(case, tmp_path)
    assert (info.traceback[-1].path, info.traceback[-1].lineno + 1) == (doc, 5)


async def test_a_server_block_that_never_listens_fails(tmp_path: Path) -> None:
    code = 'address = "/run/s.sock"'
    [case] = cases([markdown(tmp_path, fence(code, "peer=client address=/run/s.sock"))])
    with pytest.raises(AssertionError, match="before the peer could connect"):
        await run_case(case, tmp_path)


async def test_with_server_gives_the_block_a_server_the_peer_connects_to(tmp_path: Path) -> None:
    code = """
async for conn in server.connections():
    print("peer:", conn.peer_app_name)
"""
    directive = 'with=server wait="peer: docs-peer" stop=server'
    [case] = cases([markdown(tmp_path, fence(code, directive))])
    assert await run_case(case, tmp_path) == "peer: docs-peer\n"
