"""The dashboard: one page, a JSON API and Prometheus metrics, served by a process of the head.

``server`` runs the web server (aiohttp) and its access check, ``collect``
gathers what the cluster does (the state API, the node daemons' figures and
what blocked calls report), ``metrics`` turns that into Prometheus gauges
with Ray's metric names, and ``static/`` holds the page (plain HTML, CSS and
JavaScript: nothing to build, nothing fetched from the internet).  The head
starts it through ``skate._private.dashboard_launch``; it needs the
``dashboard`` extra (``pip install 'skate[dashboard]'``).
"""
