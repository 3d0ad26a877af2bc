"""The wire: how every skate process talks to every other.

Layers, bottom up (each module opens with its own data flow)::

    framing     bytes <-> frames (kind, request id, method, body, buffers)
    handshake   mutual HMAC challenge on the cluster token (pure state machines)
    records     every frame on TCP in an encrypted, authenticated record
    dispatch    a decoded frame -> a handler, a waiting future or a callback
    watch/spin  who reads a socket: the I/O loop, a thread waiting on it, or
                a worker's loop reading on after a request
    connection  one authenticated connection, writable from any thread
    endpoints   listen (TCP, Unix) and connect

The control store, node daemons, workers and drivers all use this one layer.
"""

from skate._private.wire.connection import Connection
from skate._private.wire.dispatch import DEFER, ConnectionLost, Handler, RemoteError, Reply
from skate._private.wire.endpoints import connect, serve_tcp, serve_unix, split_address
from skate._private.wire.framing import ProtocolError
from skate._private.wire.handshake import AuthError
from skate._private.wire.spin import ReadOn, SpinningLoop, SpinningSelector

#: What the control store proves it is in the handshake (nodes and workers use their ids).
GCS_IDENTITY = b"gcs"

__all__ = [
    "DEFER",
    "GCS_IDENTITY",
    "AuthError",
    "Connection",
    "ConnectionLost",
    "Handler",
    "ProtocolError",
    "ReadOn",
    "RemoteError",
    "Reply",
    "SpinningLoop",
    "SpinningSelector",
    "connect",
    "serve_tcp",
    "serve_unix",
    "split_address",
]
