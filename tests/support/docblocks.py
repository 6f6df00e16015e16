"""Find the Python code blocks of the Markdown docs and the directives that say how each runs.

A directive is an HTML comment on the line(s) just before a fenced block (blank lines may sit
between them), invisible in the rendered page::

    <!-- run: peer=server address=/run/vpp/memif.sock send=8 echo -->
    ```python
    ...
    ```

Words are ``key=value`` (shell quoting: ``wait="0 docs-peer"``) or bare flags. A block
without a directive just runs as is, in a fresh namespace. The keys (see
``support.docrun`` for what the harness does with them):

``peer=server|client``
    start an aiomemif peer in that role on a private socket; ``address=TEXT`` is the
    address string in the block that the peer's socket replaces (``@name`` addresses get a
    fresh abstract name, paths a path in a temporary directory); ``id=N`` the interface id
    the peer uses (0).
``with=pair``
    bind ``aiomemif``, ``pair`` (a connected loopback ``MemifPair``), ``conn`` (its client
    end), ``rx``/``tx`` (``conn``'s queue 0); the peer is ``pair.server``.
``with=server``
    bind ``aiomemif`` and ``server`` (an aiomemif server on a private socket, interface 0);
    the peer is a client that connects to it once the block runs.
``send=N`` ``size=BYTES`` ``echo`` ``receive=N`` ``wait=TEXT``
    the peer's script: send N test frames of BYTES bytes (in pair mode before the block
    starts), expect them back unchanged (``echo``) or expect N frames from the block
    (``receive``), wait until its frames were consumed and until the block printed TEXT,
    then close normally (DISCONNECT).
``stop=NAME``
    once the peer is done, ``aclose()`` the object the block bound to NAME (a server or
    client whose ``connections()`` loop otherwise never ends); the block must then end.
``output=TEXT``
    the block must print TEXT (waited for before ``stop``).
``continue``
    run after the previous block of the same file, in the same test and namespace.
``pytest``
    the block is a pytest test file: run it with ``python -m pytest -p aiomemif`` in strict
    and in auto mode, each test on both loops.
``skip reason="..."``
    do not run it (only where running truly cannot work; the reason is required).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[2]

#: Keys taking a value, and bare flags.
VALUE_KEYS = frozenset(
    {"peer", "address", "id", "with", "send", "size", "receive", "wait", "output", "stop"}
)
FLAGS = frozenset({"echo", "continue", "pytest", "skip"})
_DIRECTIVE = re.compile(r"^\s*<!--\s*run:(?P<body>.*?)-->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
PYTHON = frozenset({"python", "py", "python3"})


class DirectiveError(ValueError):
    """A malformed directive (reported as a failing test, not silently ignored)."""


@attrs.frozen
class Directive:
    """How one block runs (all defaults: run it as is)."""

    peer: str | None = None
    address: str | None = None
    interface_id: int = 0
    setup: str | None = None
    send: int = 0
    size: int = 64
    echo: bool = False
    receive: int = 0
    wait: str | None = None
    output: str | None = None
    stop: str | None = None
    follows: bool = False
    pytest: bool = False
    skip: str | None = None

    @property
    def has_script(self) -> bool:
        """True when the peer has something to do (and so closes the link when done)."""
        return bool(self.send or self.receive or self.wait)


@attrs.frozen
class Block:
    path: Path
    line: int  # 1-based line of the first code line
    code: str
    directive: Directive

    @property
    def where(self) -> str:
        name = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{name}:{self.line}"


def parse_directive(body: str) -> Directive:
    try:
        words = shlex.split(body)
    except ValueError as exc:
        raise DirectiveError(f"unparsable directive {body!r}: {exc}") from None
    values: dict[str, str] = {}
    flags: set[str] = set()
    for word in words:
        key, eq, value = word.partition("=")
        if eq and key in VALUE_KEYS | {"reason"}:
            values[key] = value
        elif not eq and key in FLAGS:
            flags.add(key)
        else:
            raise DirectiveError(f"unknown directive word {word!r}")
    if "skip" in flags and not values.get("reason"):
        raise DirectiveError('skip needs reason="why running it cannot work"')
    if "reason" in values and "skip" not in flags:
        raise DirectiveError("reason= only goes with skip")
    if values.get("peer") not in (None, "server", "client"):
        raise DirectiveError("peer= is server or client")
    if values.get("with") not in (None, "pair", "server"):
        raise DirectiveError("with= is pair or server")
    if "peer" in values and "with" in values:
        raise DirectiveError("peer= and with= exclude each other")
    if "peer" in values and "address" not in values:
        raise DirectiveError("peer= needs address= (the address the block uses)")
    try:
        d = Directive(
            peer=values.get("peer"),
            address=values.get("address"),
            interface_id=int(values.get("id", 0)),
            setup=values.get("with"),
            send=int(values.get("send", 0)),
            size=int(values.get("size", 64)),
            echo="echo" in flags,
            receive=int(values.get("receive", 0)),
            wait=values.get("wait"),
            output=values.get("output"),
            stop=values.get("stop"),
            follows="continue" in flags,
            pytest="pytest" in flags,
            skip=values.get("reason") if "skip" in flags else None,
        )
    except ValueError as exc:
        raise DirectiveError(f"bad number in directive {body!r}: {exc}") from None
    if d.echo and not d.send:
        raise DirectiveError("echo needs send=N")
    if d.follows and (set(values) or flags - {"continue"}):
        raise DirectiveError("continue takes the previous block's directive; nothing else")
    return d


def blocks_in(path: Path) -> list[Block]:
    """Every Python block of one Markdown file, with its directive."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    pending: tuple[int, str] | None = None  # (line, body) of a directive not yet used
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := _DIRECTIVE.match(line):
            if pending is not None:
                raise DirectiveError(f"{path.name}:{pending[0]}: directive without a block")
            pending = (i + 1, m["body"])
        elif m := _FENCE.match(line):
            fence, indent = m["fence"], len(m["indent"])
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(fence):
                end += 1
            if m["info"].lower() in PYTHON:
                code = "\n".join(ln[indent:] for ln in lines[i + 1 : end]) + "\n"
                try:
                    d = parse_directive(pending[1]) if pending else Directive()
                except DirectiveError as exc:
                    raise DirectiveError(f"{path.name}:{pending and pending[0]}: {exc}") from None
                found.append(Block(path, i + 2, code, d))
            elif pending is not None:
                raise DirectiveError(
                    f"{path.name}:{pending[0]}: directive before a non-Python block"
                )
            pending = None
            i = end
        elif line.strip() and pending is not None:
            raise DirectiveError(f"{path.name}:{pending[0]}: directive not followed by a block")
        i += 1
    if pending is not None:
        raise DirectiveError(f"{path.name}:{pending[0]}: directive without a block")
    return found


def doc_files() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@attrs.frozen
class Case:
    """One test: a block and the blocks that continue it (sharing its namespace)."""

    blocks: tuple[Block, ...]

    @property
    def directive(self) -> Directive:
        return self.blocks[0].directive

    @property
    def id(self) -> str:
        first, *rest = self.blocks
        return first.where + "".join(f"+{b.line}" for b in rest)


def cases(paths: list[Path] | None = None) -> list[Case]:
    out: list[Case] = []
    for path in doc_files() if paths is None else paths:
        file_cases: list[Case] = []
        for block in blocks_in(path):
            if block.directive.follows:
                if not file_cases or file_cases[-1].directive.pytest:
                    raise DirectiveError(f"{block.where}: continue with nothing to continue")
                file_cases[-1] = Case((*file_cases[-1].blocks, block))
            else:
                file_cases.append(Case((block,)))
        out.extend(file_cases)
    return out
