"""The joblib backend: joblib.Parallel on skate actors, on a local cluster and a 2-node one."""

from __future__ import annotations

import os

import joblib
import numpy as np
import pytest

import skate
from skate.util.joblib import register_ray


@pytest.fixture(autouse=True)
def registered():
    register_ray()
    yield


def whoami(i: int) -> tuple:
    return i, os.getpid(), skate.get_runtime_context().get_node_id()


def fail_on(i: int, bad: int) -> int:
    if i == bad:
        raise KeyError(f"no item {i}")
    return i


def free_cpus(_: int) -> float:
    return skate.available_resources().get("CPU", 0.0)


# A scikit-learn-style workload: k-fold cross-validation of ridge regression
# over a grid of penalties, each (alpha, fold) fit being one joblib call.


def make_data(n: int = 600, d: int = 20, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = X @ w + 0.1 * rng.normal(size=n)
    return X, y


def fit_and_score(X, y, train, test, alpha: float) -> float:
    Xt, yt = X[train], y[train]
    w = np.linalg.solve(Xt.T @ Xt + alpha * np.eye(X.shape[1]), Xt.T @ yt)
    resid = y[test] - X[test] @ w
    return float(1.0 - resid @ resid / ((y[test] - y[test].mean()) ** 2).sum())  # R^2


def folds(n: int, k: int) -> list:
    idx = np.arange(n)
    parts = np.array_split(idx, k)
    return [(np.setdiff1d(idx, p), p) for p in parts]


def grid_search(X, y, alphas, k=5) -> dict:
    jobs = [(a, tr, te) for a in alphas for tr, te in folds(len(y), k)]
    scores = joblib.Parallel(n_jobs=-1)(joblib.delayed(fit_and_score)(X, y, tr, te, a) for a, tr, te in jobs)
    by_alpha: dict = {}
    for (a, _, _), s in zip(jobs, scores, strict=True):
        by_alpha.setdefault(a, []).append(s)
    return {a: float(np.mean(v)) for a, v in by_alpha.items()}


def test_register_ray_adds_both_names():
    from joblib.parallel import BACKENDS

    from skate.util.joblib.backend import SkateBackend

    assert BACKENDS["ray"] is SkateBackend and BACKENDS["skate"] is SkateBackend


@pytest.mark.parametrize("name", ["ray", "skate"])
def test_parallel_runs_on_pool_actors(ray_start, name):
    with joblib.parallel_backend(name):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(whoami)(i) for i in range(40))
    assert [i for i, _, _ in out] == list(range(40))
    pids = {p for _, p, _ in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_scikit_learn_style_grid_search(ray_start):
    X, y = make_data()
    alphas = [0.01, 1.0, 100.0, 10_000.0]
    with joblib.parallel_backend("skate"):
        scores = grid_search(X, y, alphas)
    with joblib.parallel_backend("sequential"):
        expected = grid_search(X, y, alphas)
    assert scores == pytest.approx(expected)
    assert max(scores, key=scores.get) < 100.0  # heavy penalties fit worse


def test_n_jobs_minus_one_starts_a_cluster_when_not_connected():
    assert not skate.is_initialized()
    with joblib.parallel_backend("ray"):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(whoami)(i) for i in range(4))
    assert skate.is_initialized()
    assert [i for i, _, _ in out] == [0, 1, 2, 3]


def test_n_jobs_one_runs_here(ray_start):
    with joblib.parallel_backend("ray"):
        out = joblib.Parallel(n_jobs=1)(joblib.delayed(whoami)(i) for i in range(3))
    assert {p for _, p, _ in out} == {os.getpid()}


def test_errors_are_raised_by_parallel(ray_start):
    with joblib.parallel_backend("ray"):
        with pytest.raises(KeyError, match="no item 5"):
            joblib.Parallel(n_jobs=2)(joblib.delayed(fail_on)(i, 5) for i in range(10))


def test_ray_remote_args_reach_the_actors(ray_start):
    with joblib.parallel_backend("ray", ray_remote_args={"num_cpus": 1}):
        free = joblib.Parallel(n_jobs=2)(joblib.delayed(free_cpus)(i) for i in range(4))
    assert set(free) == {0.0}  # each of the two actors holds a CPU
    free = joblib.Parallel(n_jobs=2, backend="ray", ray_remote_args={"num_cpus": 1})(
        joblib.delayed(free_cpus)(i) for i in range(2)
    )
    assert set(free) == {0.0}


def test_unknown_backend_option_is_refused(ray_start):
    with pytest.raises(TypeError, match="does not support"):
        with joblib.parallel_backend("ray", bogus=1):
            pass


def test_too_many_jobs_for_the_cluster_is_refused(ray_start):
    with joblib.parallel_backend("ray"):
        with pytest.raises(ValueError, match="only 2 CPUs"):
            joblib.Parallel(n_jobs=3)(joblib.delayed(whoami)(i) for i in range(3))


@pytest.mark.timeout(180)
def test_workload_spreads_over_a_two_node_cluster(cluster):
    cluster.add_node(num_cpus=1)
    skate.init(address=cluster.address)
    X, y = make_data(seed=1)
    with joblib.parallel_backend("ray", ray_remote_args={"num_cpus": 1}):
        nodes = {n for _, _, n in joblib.Parallel(n_jobs=-1)(joblib.delayed(whoami)(i) for i in range(8))}
        scores = grid_search(X, y, [0.1, 10.0])
    assert len(nodes) == 2  # one worker per node
    with joblib.parallel_backend("sequential"):
        assert scores == pytest.approx(grid_search(X, y, [0.1, 10.0]))
