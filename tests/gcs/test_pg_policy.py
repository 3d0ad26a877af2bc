"""Where placement-group bundles go (skate._private.gcs.pg_policy): pure decisions, no I/O."""

from __future__ import annotations

from skate._private import bundle_resources as br
from skate._private.gcs.pg_policy import NodeRoom, matches, place

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def rooms(**cpus: float) -> dict[bytes, NodeRoom]:
    ids = {"a": A, "b": B, "c": C}
    return {ids[k]: NodeRoom({"CPU": v}, {"zone": k}) for k, v in cpus.items()}


def bundles(*cpus: float) -> dict[int, dict]:
    return {i: {"CPU": c} for i, c in enumerate(cpus)}


def test_strict_pack_one_node_or_none():
    assert set(place(bundles(1, 1), "STRICT_PACK", rooms(a=1, b=2, c=1)).values()) == {B}
    assert place(bundles(1, 1, 1), "STRICT_PACK", rooms(a=2, b=2, c=2)) is None


def test_strict_pack_sticks_to_the_node_holding_the_others():
    assert place(bundles(1), "STRICT_PACK", rooms(a=4, b=4), placed={5: B}) == {0: B}
    assert place(bundles(1), "STRICT_PACK", rooms(a=4, b=0), placed={5: B}) is None


def test_pack_prefers_one_node_then_as_few_as_can():
    assert set(place(bundles(1, 1), "PACK", rooms(a=1, b=3)).values()) == {B}
    got = place(bundles(2, 2, 1), "PACK", rooms(a=2, b=3, c=1))
    assert got is not None and len(set(got.values())) == 2


def test_strict_spread_one_bundle_per_node():
    got = place(bundles(1, 1, 1), "STRICT_SPREAD", rooms(a=4, b=1, c=1))
    assert sorted(got.values()) == sorted([A, B, C])
    assert place(bundles(1, 1, 1), "STRICT_SPREAD", rooms(a=4, b=4)) is None
    # a dead node's bundle goes to a node holding none of the others
    assert place({1: {"CPU": 1}}, "STRICT_SPREAD", rooms(a=4, b=4, c=4), placed={0: A, 2: B}) == {1: C}


def test_spread_uses_distinct_nodes_and_shares_when_it_must():
    assert len(set(place(bundles(1, 1), "SPREAD", rooms(a=4, b=4, c=4)).values())) == 2
    got = place(bundles(1, 1, 1), "SPREAD", rooms(a=2, b=1))
    assert sorted(got.values()).count(A) == 2


def test_label_selectors():
    assert matches({"zone": "a"}, {"zone": "a"})
    assert not matches({"zone": "!a"}, {"zone": "a"})
    assert matches({"zone": "in(a,b)"}, {"zone": "b"})
    assert matches({"zone": "!in(a,b)"}, {"zone": "c"})
    got = place(bundles(1, 1), "SPREAD", rooms(a=4, b=4, c=4), selectors=[{"zone": "c"}, {"zone": "!c"}])
    assert got[0] == C and got[1] != C


def test_bundle_resource_names_like_ray():
    hexid = "ab" * 18
    gained = br.group_resources(hexid, 1, {"CPU": 2, "GPU": 0})
    assert gained == {
        f"CPU_group_1_{hexid}": 2.0, f"CPU_group_{hexid}": 2.0,
        f"bundle_group_1_{hexid}": 1000.0, f"bundle_group_{hexid}": 1000.0,
    }
    assert br.request_in_group({"CPU": 1}, hexid, -1) == {f"CPU_group_{hexid}": 1.0, f"bundle_group_{hexid}": 0.001}
    assert br.groups_in(gained) == {hexid} and br.groups_in({"CPU": 1}) == set()
