"""``python -m loopy``: the same as the ``loopy`` command (see ``cli.py``)."""

from .cli import main

raise SystemExit(main())
