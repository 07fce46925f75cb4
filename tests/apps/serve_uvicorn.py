"""uvicorn started from Python, as ``python serve_uvicorn.py HOW PORT``.

``HOW`` picks the way (the first is the one the README recommends):

* ``loop-option``: ``uvicorn.run(app, loop="loopy:new_event_loop")``, runs on loopy;
* ``install``: ``loopy.install()`` then ``uvicorn.run(app)``: the trap, uvicorn
  builds its own loop from its ``loop`` option ("auto") and never asks asyncio's
  policy, so this runs on uvloop (if installed) or asyncio's loop;
* ``install-loop-none``: ``loopy.install()`` then ``uvicorn.run(app, loop="none")``:
  uvicorn leaves the loop to asyncio, whose policy loopy installed, so loopy runs.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette_app import app

import loopy

how, port = sys.argv[1], int(sys.argv[2])
if how == "loop-option":
    uvicorn.run(app, host="127.0.0.1", port=port, loop="loopy:new_event_loop")
elif how == "install":
    loopy.install()
    uvicorn.run(app, host="127.0.0.1", port=port)
elif how == "install-loop-none":
    loopy.install()
    uvicorn.run(app, host="127.0.0.1", port=port, loop="none")
else:
    sys.exit(f"serve_uvicorn.py: unknown way {how!r}")
