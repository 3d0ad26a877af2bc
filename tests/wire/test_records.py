"""The record layer on its own: round trips, tampering, replay, reordering."""

from __future__ import annotations

import os

import pytest

from skate._private.wire import framing
from skate._private.wire.framing import FrameReader, ProtocolError
from skate._private.wire.records import MAX_RECORD, RecordCipher


def _pair() -> tuple[RecordCipher, RecordCipher]:
    a, b = os.urandom(32), os.urandom(32)
    return RecordCipher(a, b), RecordCipher(b, a)


def _deliver(records: list, receiver: RecordCipher) -> bytes:
    inbox, plain = FrameReader(), FrameReader()
    data = b"".join(bytes(r) for r in records)
    inbox.space(len(data))[: len(data)] = data
    inbox.received(len(data))
    receiver.open(inbox, plain)
    return bytes(plain.held())


def test_round_trip_small_and_multi_record_frames():
    alice, bob = _pair()
    small = framing.encode(framing.REQUEST, 1, "ping", None)
    assert _deliver(alice.seal(small), bob) == b"".join(bytes(p) for p in small)
    big = os.urandom(2 * MAX_RECORD + 5)
    records = alice.seal([b"head", big])
    # The small piece has its own record and the large buffer three of its
    # own (encrypted from its memory, not joined to the header first); each
    # record is a length and a ciphertext.
    assert len(records) == 2 * 4
    assert len(records[1]) == 4 + 16  # "head" and the tag
    assert _deliver(records, bob) == b"head" + big


def test_small_pieces_share_records_and_order_is_kept():
    alice, bob = _pair()
    pieces = [b"a" * 10, b"b" * 20, os.urandom(MAX_RECORD // 2), b"c" * 30, b"d" * 5, bytearray(70_000)]
    records = alice.seal(pieces)
    assert len(records) == 2 * 4  # [a b] [large] [c d] [bytearray, a large piece on its own]
    assert _deliver(records, bob) == b"".join(bytes(p) for p in pieces)
    assert _deliver(alice.seal([]), bob) == b""  # an empty frame is still one record


def test_a_flipped_bit_ends_the_connection():
    alice, bob = _pair()
    records = alice.seal([b"hello"])
    tampered = bytearray(records[1])
    tampered[3] ^= 1
    with pytest.raises(ProtocolError, match="failed authentication"):
        _deliver([records[0], bytes(tampered)], bob)


def test_replayed_or_reordered_records_fail():
    alice, bob = _pair()
    first, second = alice.seal([b"one"]), alice.seal([b"two"])
    with pytest.raises(ProtocolError):
        _deliver(second + first, bob)  # out of order
    alice, bob = _pair()
    first = alice.seal([b"one"])
    with pytest.raises(ProtocolError):
        _deliver(first + first, bob)  # the same record twice


def test_each_direction_has_its_own_key():
    alice, bob = _pair()
    with pytest.raises(ProtocolError):
        _deliver(alice.seal([b"to bob"]), alice)  # reflected back at the sender


def test_an_oversized_record_length_is_refused_before_buffering():
    _, bob = _pair()
    with pytest.raises(ProtocolError, match="a record of"):
        _deliver([(MAX_RECORD + 1000).to_bytes(4, "little")], bob)
