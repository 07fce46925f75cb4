"""Entry point: ``python -m bench`` runs the suite (see ``bench/cli.py``)."""

from bench.cli import main

raise SystemExit(main())
