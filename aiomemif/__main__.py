"""``python -m aiomemif``: the same as the ``aiomemif`` command."""

from aiomemif.cli import main

raise SystemExit(main())
