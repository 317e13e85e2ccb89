"""The memory check of a sampler run (issue 18, part 4): the estimate, the memory available, the refusal."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm import memory
from bayeshlm.memory import InsufficientMemoryError, available_memory, check_memory, draws_memory


@pytest.fixture(scope="module")
def sleep_model():
    return bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))


@pytest.fixture(scope="module")
def pastes_model():
    return bh.hlm("strength ~ 1 + (1 | batch/cask)", bh.load_dataset("pastes"))


def _result_bytes(post, group):
    return sum(v.nbytes for v in post[group].to_dataset().data_vars.values()) if group in post.children else 0


@pytest.mark.parametrize("model_name, kwargs", [
    ("sleep_model", {}),
    ("sleep_model", {"log_likelihood": "group"}),
    ("sleep_model", {"keep_group_draws": 5, "group_moments": True}),
    ("sleep_model", {"keep_group_draws": False}),
    ("pastes_model", {}),
])
def test_the_estimate_covers_the_arrays_of_the_result(request, model_name, kwargs):
    """The draws of the result are half of the estimate of each part (buffers + result), exactly."""
    model = request.getfixturevalue(model_name)
    post = bh.sample(model, draws=40, warmup=10, chains=3, seed=5, progress=False, **kwargs)
    parts = draws_memory(model, draws=40, chains=3, **kwargs)
    effects = sum(v.nbytes for k, v in post.posterior.data_vars.items() if k.endswith("_effect"))
    # the sampler's buffers hold every random column for every group (two for pastes); each factor's
    # effects in the result are a view of its own column
    columns = 2 if model_name == "pastes_model" else 1
    assert parts["group_draws"] == columns * effects
    loglik = _result_bytes(post, "log_likelihood")
    if model_name == "pastes_model":  # plus the finest groups' full coefficient vectors, gathered and joined
        loglik += 2 * 3 * 40 * 30 * 2 * 8
    assert parts["log_likelihood"] == loglik
    others = sum(v.nbytes for k, v in post.posterior.data_vars.items() if not k.endswith("_effect"))
    assert others + _result_bytes(post, "sample_stats") <= parts["posterior"]
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_the_estimate_is_close_to_the_measured_peak(sleep_model):
    """tracemalloc sees numpy's allocations: the peak of a run is the estimate within 10%."""
    import tracemalloc

    bh.sample(sleep_model, draws=5, warmup=5, chains=2, seed=1, progress=False)  # compiled and warm
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        bh.sample(sleep_model, draws=2000, warmup=20, chains=4, seed=1, progress=False)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    estimate = draws_memory(sleep_model, draws=2000, chains=4)["total"]
    assert 0.9 * peak <= estimate <= 1.1 * peak, (estimate, peak)


def test_auto_log_likelihood_follows_the_results_rule(sleep_model):
    small = draws_memory(sleep_model, draws=1000, chains=4)  # 4000 x 180 rows: pointwise
    large = draws_memory(sleep_model, draws=30_000, chains=4)  # 2.16e7 values: by subject
    assert small["log_likelihood"] == 8 * 4 * 1000 * 180
    assert large["log_likelihood"] == 8 * 4 * 30_000 * 18
    assert draws_memory(sleep_model, draws=1000, chains=4, keep_group_draws=10)["log_likelihood"] == 0


def test_a_run_that_cannot_fit_is_refused_before_it_starts(sleep_model):
    with pytest.raises(InsufficientMemoryError) as info:
        bh.sample(sleep_model, draws=10**12, chains=4, progress=False)
    err = info.value
    assert isinstance(err, MemoryError) and isinstance(err, ValueError)
    assert err.need == draws_memory(sleep_model, draws=10**12, chains=4)["total"] > err.available
    message = str(err)
    assert message.startswith("4 chains x 1000000000000 draws need about 2.88 PB of memory for the draws "
                              "(posterior 800 TB, group draws 1.15 PB, log likelihood 576 TB, log prior 352 TB")
    for remedy in ("ask for fewer draws (draws=", "or less, or fewer chains)",
                   "keep_group_draws=100 (with group_moments=True", "log_likelihood=False"):
        assert remedy in message, remedy


def test_the_numbers_and_remedies_of_the_message(sleep_model):
    parts = draws_memory(sleep_model, draws=1000, chains=4)
    with pytest.raises(InsufficientMemoryError) as info:
        check_memory(sleep_model, draws=1000, chains=4, available=parts["total"] // 2)
    message = str(info.value)
    fitting = int(1000 * (parts["total"] // 2) / parts["total"])
    assert f"ask for fewer draws (draws={fitting} or less" in message
    assert "log_likelihood='group' or log_likelihood=False" in message  # pointwise now: both remedies
    assert check_memory(sleep_model, draws=1000, chains=4, available=parts["total"]) == parts


def test_arguments_sample_refuses_are_left_to_sample(sleep_model):
    for bad in ({"draws": 0}, {"draws": 2.5}, {"chains": True}, {"keep_group_draws": -3}, {"log_likelihood": "x"}):
        assert check_memory(sleep_model, available=0, **bad) is None


def test_available_memory_reads_meminfo_and_the_control_group(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "_address_space_available", lambda: None)  # whatever ulimit -v the tests run under
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert available_memory(meminfo=meminfo, cgroup=cgroup) == 8_000_000 * 1024  # no limit of the group
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("1000\n")
    assert available_memory(meminfo=meminfo, cgroup=cgroup) == 8_000_000 * 1024
    (cgroup / "memory.max").write_text(f"{2 * 1024**3}\n")
    (cgroup / "memory.current").write_text(f"{1024**3}\n")
    assert available_memory(meminfo=meminfo, cgroup=cgroup) == 1024**3  # a container's limit is smaller


def test_available_memory_without_meminfo_falls_back_on_sysconf(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(memory, "_address_space_available", lambda: None)
    found = available_memory(meminfo=tmp_path / "absent", cgroup=tmp_path / "absent")
    expected = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert found is not None and abs(found - expected) <= 0.2 * expected  # free memory moves a little meanwhile


def test_many_groups_point_at_keeping_fewer_group_draws():
    rng = np.random.default_rng(4)
    g = rng.integers(0, 20_000, 40_000)
    df = pd.DataFrame({"y": rng.normal(size=g.size), "x": rng.normal(size=g.size), "g": g})
    model = bh.hlm("y ~ x + (x | g)", df)
    parts = draws_memory(model, draws=1000, chains=4, log_likelihood=False)
    assert model.n_groups > 17_000
    assert parts["group_draws"] == 8 * 4 * 1000 * model.n_groups * 2  # about 1.1 GB
    with pytest.raises(InsufficientMemoryError, match=r"keep the draws of fewer groups: keep_group_draws=100"):
        check_memory(model, draws=1000, chains=4, log_likelihood=False, available=10**9)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the process's size is read from /proc (Linux)")
def test_an_address_space_limit_counts():
    """Under ``ulimit -v`` the room left below the limit is what a run can use."""
    import subprocess
    import sys

    script = ("import resource; from bayeshlm.memory import available_memory\n"
              "used = next(int(x.split()[1]) * 1024 for x in open('/proc/self/status') if x.startswith('VmSize:'))\n"
              "resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.RLIM_INFINITY))\n"
              "print(available_memory())")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert 0 < int(proc.stdout) <= 2**30


@pytest.mark.parametrize(
    "family, glm_move",
    [("poisson", "augment"), ("bernoulli", "augment"), ("poisson", "newton"), ("bernoulli", "newton")],
)
def test_the_estimate_covers_the_augmentation_of_a_non_gaussian_model(family, glm_move):
    """The rows the chains read and each chain's working arrays (for counts, the latent times; with the
    Newton proposal, the rows' two buffers and the groups' sums): within a factor 2."""
    from bayeshlm.sample import augmentations

    data = bh.load_dataset("grouseticks")
    data["any"] = (data["ticks"] > 0).astype(float)
    response = "ticks" if family == "poisson" else "any"
    groups = "(1 | location/brood)" if glm_move == "augment" else "(1 | location)"
    model = bh.hlm(f"{response} ~ C(year) + height + {groups}", data, family=family)
    parts = draws_memory(model, draws=10, chains=3, log_likelihood=False, glm_move=glm_move)
    seen, allocated = set(), 0
    for aug in augmentations(model, 3, 10, newton=glm_move == "newton"):
        for field in aug:
            for arr in (field if isinstance(field, tuple) else (field,)):
                if isinstance(arr, np.ndarray) and id(arr) not in seen:
                    seen.add(id(arr))
                    allocated += arr.nbytes
    assert allocated <= parts["augmentation"] <= 2 * allocated, (allocated, parts["augmentation"])
