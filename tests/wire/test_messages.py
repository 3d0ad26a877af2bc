"""Every message type is declared once, and every daemon validates what it is sent.

Malformed but authenticated requests get a clear protocol error back, and the
daemon goes on serving: the control store, a node daemon, a driver's core
worker, and a worker's control and execution endpoints.
"""

from __future__ import annotations

import asyncio
import typing

import msgspec
import pytest

import skate
from skate._private import messages, runtime, wire
from skate._private.core_worker.core import CoreWorker
from skate._private.core_worker.executor import Executor
from skate._private.gcs.server import GcsServer
from skate._private.raylet.server import Raylet

#: A body no declared request type accepts (every request type is a dict,
#: a list, bytes, a string, None or a union of those).
WRONG = 12345


def _class_handlers(cls: type) -> set[str]:
    return {name[3:] for name in dir(cls) if name.startswith("on_") and name != "on_serialize_ref"}


def _served() -> dict[str, set[str]]:
    executor = Executor(None)
    return {
        "control store": _class_handlers(GcsServer),
        "node daemon": _class_handlers(Raylet) | {"pub", "shutdown"},
        "core worker": _class_handlers(CoreWorker) | set(executor.handlers()),
        "execution endpoint": set(executor.exec_handlers()),
    }


def test_every_handled_method_has_a_declared_message_type():
    for daemon, methods in _served().items():
        undeclared = methods - set(messages.REQUESTS)
        assert not undeclared, f"the {daemon} handles messages with no declared type: {sorted(undeclared)}"


def test_declared_types_reject_a_wrong_body_and_accept_a_right_one():
    dec = messages.request_decoder("obj_reserve")
    assert dec.decode(msgspec.msgpack.encode({"oid": b"x" * 20, "size": 10})) == {"oid": b"x" * 20, "size": 10}
    with pytest.raises(msgspec.ValidationError, match=r"\$\.size"):
        dec.decode(msgspec.msgpack.encode({"oid": b"x" * 20, "size": "ten"}))
    with pytest.raises(msgspec.ValidationError, match="missing required field `oid`"):
        dec.decode(msgspec.msgpack.encode({"size": 10}))


def _checked_methods(methods: set[str]) -> list[str]:
    # A method whose body may be anything cannot be sent a wrong one.
    return sorted(m for m in methods if messages.REQUESTS[m][0] is not typing.Any)


async def _send_malformed(target, token: bytes, methods: list[str], healthy: tuple[str, object]) -> dict[str, str]:
    """Sends each method a wrong body; returns the errors; checks the peer still answers."""
    conn = await wire.connect(target, token, {})
    errors = {}
    try:
        for method in methods:
            with pytest.raises(wire.RemoteError) as info:
                await asyncio.wait_for(conn.request(method, WRONG), 10)
            errors[method] = str(info.value)
        # The same connection still serves a well-formed request.
        method, body = healthy
        await asyncio.wait_for(conn.request(method, body), 10)
    finally:
        conn.close()
    return errors


def _assert_protocol_errors(errors: dict[str, str]) -> None:
    assert len(errors) >= 5, errors
    for method, text in errors.items():
        assert text.startswith(f"ProtocolError: bad {method!r} message: Expected"), (method, text)


@pytest.mark.timeout(60)
def test_daemons_answer_malformed_messages_with_a_protocol_error_and_keep_serving(ray_start):
    core = runtime.current()
    served = _served()
    node = next(n for n in core.gcs_call("get_nodes") if n["alive"])

    @skate.remote
    class Echo:
        def echo(self, x):
            return x

    echo = Echo.remote()
    assert skate.get(echo.echo.remote(1)) == 1
    address = echo._state.info["address"]  # [id, ip, port, uds, exec port, exec uds]

    async def attack() -> None:
        _assert_protocol_errors(
            await _send_malformed(core.gcs_address, core.token, _checked_methods(served["control store"]), ("get_nodes", None))
        )
        _assert_protocol_errors(
            await _send_malformed(node["uds"], core.token, _checked_methods(served["node daemon"]), ("node_stats", None))
        )
        _assert_protocol_errors(
            await _send_malformed(core.address[3], core.token, _checked_methods(served["core worker"]), ("ping", None))
        )
        _assert_protocol_errors(
            await _send_malformed(address[3], core.token, _checked_methods(served["core worker"]), ("ping", None))
        )
        _assert_protocol_errors(
            await _send_malformed(
                address[5], core.token, _checked_methods(served["execution endpoint"]), ("hello", [b"x", "127.0.0.1", 1, ""])
            )
        )

    asyncio.run(attack())
    # The whole cluster still works: tasks, actor calls, objects.
    assert skate.get(echo.echo.remote(2)) == 2
    assert skate.get(skate.put("still here")) == "still here"

    @skate.remote
    def add(a, b):
        return a + b

    assert skate.get(add.remote(1, 2)) == 3


def test_undeclared_fields_are_found_at_any_depth():
    raw = msgspec.msgpack.encode({"nodes": [{"node_id": b"n", "ip": "h", "port": 1, "uds": "", "resources": {},
                                             "store_prefix": "p", "pid": 1, "session_dir": "", "is_head": True,
                                             "labels": {}, "surprise": 1}]})
    typed = messages.reply_decoder("register_node").decode(raw)
    assert messages.undeclared(typed, msgspec.msgpack.decode(raw)) == ["$.nodes[0].surprise"]
