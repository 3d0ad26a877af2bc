"""``python -m skate.dashboard``: the dashboard process the head starts (see ``server.py``).

It lowers its CPU priority before importing the web server, so neither its
start (which runs while the cluster boots) nor its work ever slows the
cluster's own.
"""

import os

try:
    os.nice(10)
except OSError:
    pass

from skate.dashboard import server  # noqa: E402

server.run()
