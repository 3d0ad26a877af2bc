"""Resolving the address to join, in Ray's order (explicit, environment, latest live CLI cluster)."""

from __future__ import annotations

import os

import pytest

from skate._private import discovery, node


def test_no_cluster_means_a_new_one_or_an_error_for_auto():
    assert discovery.resolve_address(None) is None
    assert discovery.resolve_address("local") is None
    with pytest.raises(ConnectionError, match="Could not find any running skate instance"):
        discovery.resolve_address("auto")


def test_discoverable_cluster_is_found(cluster):
    assert discovery.resolve_address(None) == cluster.address
    assert discovery.resolve_address("auto") == cluster.address
    assert discovery.resolve_address("local") is None


def test_environment_beats_the_latest_cluster(cluster, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert discovery.resolve_address(None) == "10.1.2.3:6379"
    assert discovery.resolve_address("auto") == "10.1.2.3:6379"
    monkeypatch.setenv("SKATE_ADDRESS", "10.9.9.9:1234")
    assert discovery.resolve_address(None) == "10.9.9.9:1234"
    # An explicit address beats the environment, like Ray's.
    assert discovery.resolve_address("10.0.0.1:7000") == "10.0.0.1:7000"
    monkeypatch.setenv("SKATE_ADDRESS", "local")
    assert discovery.resolve_address(None) is None


@pytest.mark.parametrize("bad", ["nonsense", "host:", ":6379", "host:99999", "ray://host:10001"])
def test_malformed_addresses(bad):
    with pytest.raises(ValueError):
        discovery.resolve_address(bad)


def test_localhost_is_normalized():
    assert discovery.check_address("localhost:6379") == "127.0.0.1:6379"


def test_record_of_a_reused_pid_is_not_alive(cluster):
    rec = node.lookup_cluster(cluster.address)
    assert node.cluster_alive(rec)
    assert not node.cluster_alive(dict(rec, gcs_created=rec["gcs_created"] - 100))
    assert not node.cluster_alive(dict(rec, gcs_pid=os.getpid(), gcs_created=None))


def test_embedded_cluster_is_recorded_but_not_discoverable(ray_start):
    address = ray_start.get_runtime_context().gcs_address
    rec = node.lookup_cluster(address)
    assert rec is not None and rec["discoverable"] is False
    assert discovery.resolve_address(None) is None
