"""The core benchmark script runs end to end at a tiny size and writes its two outputs."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_core.py"


def _script(name):
    """A benchmark script loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCH.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_core_quick(tmp_path, capsys):
    bench = _script("bench_core")
    assert bench.main(["--quick", "--no-first-fit", "--models", "eight_schools", "radon", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["models"]) == {"eight_schools", "radon"}
    run = results["models"]["radon"]["runs"][0]
    for key in ("sampling_seconds", "min_ess_bulk", "min_ess_tail", "max_rhat", "min_ess_per_second"):
        assert run[key] > 0
    assert run["n_parameters"] == 2 + 1 + 1 + 85  # fixed, sigma, county SD, 85 county effects
    assert results["machine"]["cpus"] >= 1
    table = (tmp_path / "CORE_RESULTS.md").read_text()
    assert "| radon | 89 |" in table and "min-ESS/s" in table


def test_bench_em_quick(tmp_path):
    bench = _script("bench_em")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "em_results.json").read_text())
    row = results["models"]["radon_vi"]["REML"]
    assert row["bayeshlm_seconds"] > 0
    assert abs(row["bayeshlm_loglik"] - row["lme4_loglik"]) < 1e-6 * abs(row["lme4_loglik"])
    assert "| dyestuff | REML |" in (tmp_path / "EM_RESULTS.md").read_text()


def test_bench_em_levels_quick(tmp_path):
    """The three-level EM benchmark runs (bayeshlm alone: R is not needed here) and fits what it simulated."""
    bench = _script("bench_em_levels")
    assert bench.main(["--quick", "--no-lme4", "--out", str(tmp_path)]) == 0
    run = json.loads((tmp_path / "em_levels_results.json").read_text())["runs"][0]
    assert run["schools"] == 10 and run["children"] > 100 and run["lme4"] is None
    for method in ("REML", "ML"):
        assert run["bayeshlm"][method]["converged"] and run["bayeshlm"][method]["seconds"] > 0
    assert "| REML |" in (tmp_path / "EM_LEVELS_RESULTS.md").read_text()


def test_bench_levels_quick(tmp_path):
    bench = _script("bench_levels")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "levels_results.json").read_text())
    rows = results["rows"]
    assert [r["rows_per_class"] for r in rows] == [5, 50]
    assert rows[1]["n_rows"] == 10 * rows[0]["n_rows"] and rows[1]["n_groups"] == rows[0]["n_groups"]
    assert all(r["sweep_ms"] > 0 for r in rows + results["groups"])
    assert "| 50 |" in (tmp_path / "LEVELS_RESULTS.md").read_text()


def test_bench_peers_quick(tmp_path):
    """The peer harness end to end on eight schools, bayeshlm's sampler and EB/ML fit (the
    Python peers are in the `bench` extra, not installed for the tests)."""
    bench = _script("bench_peers")
    assert bench.main(["--quick", "--models", "eight_schools", "--systems", "bayeshlm", "bayeshlm_em",
                       "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "peers_results.json").read_text())
    ours = results["models"]["eight_schools"]["bayeshlm"]
    assert ours["min_ess_bulk"] > 0 and ours["max_rhat"] < 1.1 and ours["peak_memory_mb"] > 0
    # the user's call, defaults and result included, is charged; the sampler's own time kept beside it
    assert 0 < ours["sampler_seconds"] < ours["sampling_seconds"] and ours["log_likelihood"] == "pointwise"
    assert ours["min_ess_per_sampler_second"] > ours["min_ess_per_second"]
    # and the same call without the log-likelihood, which no peer computes: the same draws, checked in the worker
    assert 0 < ours["like_for_like_seconds"] and ours["min_ess_per_like_for_like_second"] > 0
    assert results["models"]["eight_schools"]["bayeshlm_em"]["fit_seconds"] > 0
    assert results["limit_seconds"] == bench.DEFAULT_LIMIT and "run_minutes" in results
    assert "| eight_schools | bayeshlm |" in (tmp_path / "PEERS_RESULTS.md").read_text()


def test_collapsed_peer_draws_the_group_effects_exactly():
    """The collapsed peers' group effects, drawn given each draw, have the exact conditional mean and covariance.

    ``b_j | a, s2, T, y ~ N(M_j^-1 X_j'r_j / s2, M_j^-1)`` with ``M_j = T^-1 + X_j'X_j / s2``, computed
    densely for each subject of sleepstudy; 40,000 draws at one point give means within 5 Monte
    Carlo SEs (a false alarm about once in 1.7 million per value) and covariances within 3% of
    the variances' scale (over 4 SEs: about once in 30,000 per value).
    """
    import numpy as np

    import bayeshlm as bh

    bench = _script("bench_peers")
    design = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy")).design
    cs = bench.collapsed_stats(design)
    a, s2 = np.array([250.0, 10.0]), 650.0
    T = np.array([[600.0, 10.0], [10.0, 35.0]])
    S = 40_000
    draws = {"fixed": np.tile(a, (S, 1)), "s2": np.full(S, s2), "T": np.tile(T, (S, 1, 1)), "m": np.zeros((S, 0))}
    b = bench.collapsed_group_draws(cs, draws, 3)
    for j in (0, 7, 17):
        rows = design.group_idx == j
        X, r = design.X[rows], design.y[rows] - design.F[rows] @ a
        cov = np.linalg.inv(np.linalg.inv(T) + X.T @ X / s2)
        mean = cov @ X.T @ r / s2
        se = np.sqrt(np.diag(cov) / S)
        assert np.all(np.abs(b[:, j].mean(axis=0) - mean) < 5 * se)
        scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
        assert np.all(np.abs(np.cov(b[:, j].T) - cov) <= 0.03 * scale)


def test_bench_overhead_quick(tmp_path):
    bench = _script("bench_overhead")
    assert bench.main(["--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "overhead_results.json").read_text())["results"]
    assert [r["rows"] for r in results] == [10_000, 100_000]
    for r in results:
        assert 0 < r["sampler_seconds"] < r["total_seconds"] and r["ratio"] > 1
        assert r["results_seconds"] < r["total_seconds"]
    assert results[1]["log_likelihood"] == "group"  # 4 x 100 draws x 1e5 rows is over the pointwise limit
    assert "| 100,000 | 1,000 |" in (tmp_path / "OVERHEAD_RESULTS.md").read_text()


def test_bench_scale_small(tmp_path):
    """All three paths (frame with hlm_stats, Parquet on Dask, frame with hlm), each in its own
    interpreter, at a tiny size: the same model from each."""
    bench = _script("bench_scale")
    assert bench.main(["--rows", "2e4", "--groups", "200", "--draws", "20", "--warmup", "20",
                       "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "scale_results.json").read_text())["results"]
    assert [r["path"] for r in results] == ["frame", "parquet", "frame_hlm"]
    for r in results:
        assert r["rows"] == 20000 and r["groups"] == 200
        assert r["end_to_end_seconds"] > 0 and r["memory_over_baseline_mb"] > 0
        assert abs(r["reml_sd"]["x"] - results[0]["reml_sd"]["x"]) < 1e-6
    assert "Parquet (8 files)" in (tmp_path / "SCALE_RESULTS.md").read_text()


def test_bench_sweep_quick(tmp_path):
    bench = _script("bench_sweep")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "sweep_results.json").read_text())
    assert [r["rows"] for r in results["by_rows"]] == [1000, 10000]
    assert [r["groups"] for r in results["by_groups"]] == [10, 100]
    assert all(r["sweep_ms"] > 0 for r in results["by_rows"] + results["by_groups"])
    assert (tmp_path / "sweep_scaling.png").stat().st_size > 1000


def test_report_renders_targets(tmp_path):
    """RESULTS.md states each target as met or missed from the JSON of one run, the best peer form the opponent."""
    report = _script("report")
    ten = {"min_ess_per_second": 10.0}
    stopped = {"skipped": "time limit of 4000 s reached", "limit_seconds": 4000}
    ours = {"min_ess_per_second": 2000.0, "min_ess_per_sampler_second": 2500.0}
    peers = {"date": "2026-11-27", "started": "2026-11-27 10:00", "draws": 1000, "warmup": 1000, "chains": 4,
             "limit_seconds": 300, "machine": {},
             "models": {"hsb": {"bayeshlm": ours, "nutpie/centred": ten,
                                "nutpie/collapsed": {"min_ess_per_second": 4.0},
                                "jags/centred": {"skipped": "time limit of 300 s reached", "limit_seconds": 300},
                                "bayeshlm_em": {"fit_seconds": 0.01}, "lme4": {"fit_seconds": 0.05},
                                "statsmodels": {"fit_seconds": 0.1}},
                        # the collapsed form is the best peer: the ratio is against it
                        "radon": {"bayeshlm": {"min_ess_per_second": 150.0, "min_ess_per_sampler_second": 160.0},
                                  "nutpie/noncentred": {"min_ess_per_second": 1.0}, "nutpie/collapsed": ten},
                        # no peer finished: 4000 draws in at most 4000 s bound the best peer by 1 ESS/s
                        "sleepstudy": {"bayeshlm": {"min_ess_per_second": 185.0, "min_ess_per_sampler_second": 190.0},
                                       "nutpie/centred": stopped, "stan/centred": stopped},
                        # a stopped form whose bound is above the best finished one: said so
                        "synthetic_1e6": {"bayeshlm": {"min_ess_per_second": 185.0,
                                                       "min_ess_per_sampler_second": 200.0},
                                          "nutpie/collapsed": {"min_ess_per_second": 5.0},
                                          "pymc/centred": {"skipped": "time limit of 200.0 s reached",
                                                           "limit_seconds": 200.0}}}}
    (tmp_path / "peers_results.json").write_text(json.dumps(peers))
    cold = [{"case": "no cache: sample", "seconds": 40.0, "import_seconds": 2.0, "min_seconds": 38.0,
             "max_seconds": 43.0, "runs": 3},
            {"case": "cached: fit_em", "seconds": 1.5, "import_seconds": 1.0, "min_seconds": 1.4,
             "max_seconds": 1.9, "runs": 3}]
    (tmp_path / "coldstart_results.json").write_text(json.dumps(cold))
    report.render(tmp_path)
    text = (tmp_path / "RESULTS.md").read_text()
    assert ("| hsb | 2000 (2500) | nutpie/centred | 10.0 | 200x | 100x: met | nutpie/centred (10.0) "
            "| jags/centred |") in text
    assert ("| radon | 150 (160) | nutpie/collapsed | 10.0 | 15.0x | 30x: **missed** (by 2.0x) "
            "| nutpie/noncentred (1.0) |") in text
    assert ("| sleepstudy | 185 (190) | none finished | at most 1.00 (nutpie/centred, a bound) | at least 185x | "
            "30x: met, by the bound |") in text
    assert "| synthetic_1e6 | 185 (200) | nutpie/collapsed | 5.0 | 37.0x | 50x: **missed** (by 1.4x) |" in text
    assert "On synthetic_1e6, pymc/centred was stopped at the limit" in text
    assert "5.0x (met)" in text and "10.0x (**missed**)" in text
    assert "Median of 3 runs" in text
    assert "| no cache: sample | 40.0 | 38.0 | 43.0 | 2.0 | 30 s: **missed** |" in text
    assert "| cached: fit_em | 1.5 | 1.4 | 1.9 | 1.0 | 2 s: met |" in text


def test_readme_quotes_the_committed_peer_run():
    """Every ratio README.md gives against the peers is the one of the committed run's JSON."""
    report = _script("report")
    peers = json.loads((BENCH.parent / "peers_results.json").read_text())
    readme = (BENCH.parents[1] / "README.md").read_text()
    rows = report.readme_rows(peers)
    assert len(rows) > 2
    for line in rows:
        assert line in readme, line
    assert f"limit of {peers['limit_seconds']:.0f} s" in readme and peers["started"] in readme


def test_the_time_limit_covers_the_sampling_not_the_diagnostics(tmp_path):
    """A worker past the limit before it marks its sampling done is stopped; after the mark it may finish."""
    import sys

    bench = _script("bench_peers")

    def worker(out, mark, seconds):
        code = (f"import time, pathlib; p = pathlib.Path({str(out)!r})\n"
                + ("pathlib.Path(str(p) + '.sampled').write_text('1')\n" if mark else "")
                + f"time.sleep({seconds}); p.write_text('{{\"min_ess_bulk\": 1}}')")
        return [sys.executable, "-c", code]

    out = [tmp_path / f"r{i}.json" for i in range(3)]  # each worker its own file, as in the harness
    assert bench.run_worker(worker(out[0], True, 1.5), out[0], tmp_path / "e0", limit=0.5) == {"min_ess_bulk": 1}
    stopped = bench.run_worker(worker(out[1], False, 1.5), out[1], tmp_path / "e1", limit=0.5)
    assert stopped == {"skipped": "time limit of 0.5 s reached", "limit_seconds": 0.5}
    failed = bench.run_worker([sys.executable, "-c", "raise SystemExit('no such model')"], out[2], tmp_path / "e2", 5)
    assert failed["skipped"] == "failed: no such model"


def test_bench_crossed_quick(tmp_path):
    """The crossed benchmark runs on a small synthetic design (no R) with every sampler."""
    bench = _script("bench_crossed")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    run = json.loads((tmp_path / "crossed_results.json").read_text())["designs"]["crossed_small"]
    assert run["em"]["converged"] and run["lme4"] is None and run["levels"] == "200 x 80"
    assert [s["method"] for s in run["samplers"]] == ["mh", "gibbs", "blocked"]
    for s in run["samplers"]:
        assert s["run"] and s["min_ess_bulk"] > 0 and s["n_scalars"] == 2 + 1 + 2 + 200 + 80
    assert "| crossed_small | blocked |" in (tmp_path / "CROSSED_RESULTS.md").read_text()


def test_report_renders_the_crossed_targets(tmp_path):
    """The crossed section judges the 20x target both on the default call and like for like, REML and 1M rows."""
    report = _script("report")
    peers = {"date": "2026-12-05", "started": "2026-12-05 13:00", "draws": 1000, "warmup": 1000, "chains": 4,
             "limit_seconds": 100, "machine": {},
             "models": {"scotssec": {"bayeshlm": {"min_ess_per_second": 3000.0, "min_ess_per_sampler_second": 6000.0,
                                                  "min_ess_per_like_for_like_second": 5000.0},
                                     "nutpie/noncentred": {"min_ess_per_second": 200.0},
                                     "stan/centred": {"skipped": "time limit of 100 s reached",
                                                      "limit_seconds": 100}}}}
    (tmp_path / "crossed_peers").mkdir()
    (tmp_path / "crossed_peers" / "peers_results.json").write_text(json.dumps(peers))
    run = {"samplers": [{"method": "blocked", "run": True, "end_to_end_seconds": 30.0}]}
    crossed = {"meta": "a run", "designs": {
        "crossed_73k": {"rows": 73159, "em": {"seconds": 2.5, "loglik": -10.0}, "lme4": {"seconds": 3.0,
                                                                                          "loglik": -10.0}, **run},
        "crossed_1m": {"rows": 1000225, "em": {"seconds": 20.0, "loglik": -5.0}, "lme4": None, **run}}}
    (tmp_path / "crossed_results.json").write_text(json.dumps(crossed))
    report.render(tmp_path)
    text = (tmp_path / "RESULTS.md").read_text()
    assert ("| ScotsSec (3,435 pupils, 148 x 19 schools) | 3000 (5000; 6000) | nutpie/noncentred | 200.0 | 15.0x "
            "| 25.0x | 20x: met like for like, **missed** on the default call | stan/centred |") in text
    assert "| crossed_73k | 73,159 | 2.500 | 3.000 | 0.0e+00 | 30.0 | REML under 2 s: **missed** |" in text
    assert "| crossed_1m | 1,000,225 | 20.000 | not run |  | 30.0 | posterior under 60 s: met |" in text


def test_bench_glmm_quick(tmp_path):
    """The GLMM benchmark runs on cbpp without R and writes both outputs."""
    bench = _script("bench_glmm")
    assert bench.main(["--data", "cbpp", "--repeats", "1", "--no-lme4", "--out", str(tmp_path)]) == 0
    fits = json.loads((tmp_path / "glmm_results.json").read_text())["fits"]
    assert [f["n_agq"] for f in fits] == [1, 25]
    assert all(f["bayeshlm"]["converged"] and f["lme4"] is None for f in fits)
    assert fits[1]["bayeshlm"]["loglik"] == pytest.approx(-91.98336904, abs=1e-6)
    assert "| cbpp | Laplace |" in (tmp_path / "GLMM_RESULTS.md").read_text()


def test_bench_glmm_peers_quick(tmp_path):
    """The GLMM sampler benchmark runs bayeshlm on cbpp in a worker process and writes both outputs.

    Peers are left out here (they need the bench extras and minutes); the table's ratios and
    bounds are checked on hand-made records.
    """
    bench = _script("bench_glmm_peers")
    assert bench.main(["--quick", "--systems", "bayeshlm", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "glmm_peers_results.json").read_text())["models"]["cbpp"]["bayeshlm"]
    assert rec["min_ess_bulk"] > 20 and rec["max_rhat"] < 1.2 and rec["log_likelihood"] == "pointwise"
    assert abs(rec["estimates"]["fixed[Intercept]"] + 1.4) < 0.3
    assert rec["glm_move"] == "newton"  # cbpp: 56 trials a herd on average, so the default move is Newton's
    assert "| cbpp | bayeshlm (newton) |" in (tmp_path / "GLMM_PEERS_RESULTS.md").read_text()
    ours = {"setup_seconds": 1.0, "sampling_seconds": 2.0, "min_ess_bulk": 400.0, "min_ess_tail": 500.0,
            "min_ess_per_second": 200.0, "max_rhat": 1.0, "divergences": 0}
    peer = {**ours, "min_ess_per_second": 20.0}
    text = bench.table({"m": {"bayeshlm": ours, "nutpie/centred": peer,
                              "pymc/centred": {"skipped": "time limit", "limit_seconds": 400.0}}}, 4000)
    assert "| m | nutpie/centred (20.00, measured) | 200.00 | 10.0x |" in text
    text = bench.table({"m": {"bayeshlm": ours, "pymc/centred": {"skipped": "time limit", "limit_seconds": 400.0}}},
                       4000)
    assert "| m | pymc/centred (10.00, at most, a bound) | 200.00 | at least 20.0x |" in text


def test_bench_level1_bayeshlm_alone(tmp_path):
    """The level-1 benchmark runs bayeshlm alone (no PyMC) at a tiny size on both models and writes both outputs.

    The peers' part is checked without PyMC: their draws carried to the quantities bayeshlm
    reports, and the tables' ratios on hand-made records.
    """
    import numpy as np

    bench = _script("bench_level1")
    assert bench.main(["--systems", "bayeshlm", "--draws", "60", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "level1_results.json").read_text())
    assert set(results["models"]) == {"hsb_sigma", "hsb_student"} and results["draws"] == 60
    for name, extra in (("hsb_sigma", "sigma_delta"), ("hsb_student", "nu")):
        rec = results["models"][name]["bayeshlm"]
        assert set(rec["ess_bulk"]) == {"fixed", "sigma", "school_sd", extra}
        assert rec["min_ess_bulk"] == min(rec["ess_bulk"].values()) > 0
        assert 0 < rec["sampler_seconds"] <= rec["sampling_seconds"] and rec["min_ess_per_second"] > 0
        assert 1.9 < rec["estimates"]["fixed[ses]"] < 2.9
        assert rec.get("other_cpu_share", 0.0) >= 0.0  # what other work took of the machine meanwhile
    assert -0.4 < results["models"]["hsb_sigma"]["bayeshlm"]["estimates"]["sigma_delta"] < 0  # catholic: smaller
    assert any("Gamma(shape=2, rate=0.1)" in p for p in results["priors"]["hsb_student"])
    assert "| hsb_sigma | bayeshlm |" in (tmp_path / "LEVEL1_RESULTS.md").read_text()
    # a peer's draws on the centred columns, as bayeshlm reports them
    info = {"tag": "g", "f_shift": [0.0, 1.0, 2.0], "G": [[1.0, -0.5], [0.0, 1.0]],
            "variance": {"shift": [0.4], "scale": [0.5]}}
    p = {"fixed_c": np.array([[[10.0, 1.0, 3.0]]]), "g_cov_c": np.array([[[[4.0, 1.0], [1.0, 1.0]]]]),
         "sigma_c": np.array([[2.0]]), "delta_std": np.array([[[0.2]]])}
    user = bench.to_user(p, info)
    assert user["fixed"][0, 0].tolist() == [10.0 - 1.0 - 6.0, 1.0, 3.0]
    assert np.allclose(user["g_sd"][0, 0], [np.sqrt(4.0 - 1.0 + 0.25), 1.0])
    assert np.allclose(user["sigma_delta"], 0.4) and np.allclose(user["sigma"], 2.0 * np.exp(-0.5 * 0.4 * 0.4))
    ours = {"setup_seconds": 1.0, "sampling_seconds": 2.0, "min_ess_bulk": 400.0, "min_ess_tail": 500.0,
            "min_ess_per_second": 200.0, "max_rhat": 1.0, "divergences": 0}
    text = bench.table({"m": {"bayeshlm": ours, "nutpie/centred": {**ours, "min_ess_per_second": 20.0},
                              "nutpie/noncentred": {**ours, "min_ess_per_second": 40.0},
                              "pymc/centred": {"skipped": "time limit", "limit_seconds": 400.0}}}, 4000)
    assert "| m | nutpie | noncentred (40.00) | centred (20.00) |" in text
    assert "| m | nutpie/noncentred (40.00, measured) | 200.00 | 5.0x |" in text
    text = bench.table({"m": {"bayeshlm": {"skipped": "bh.sample does not take this model"},
                              "pymc/centred": {"skipped": "time limit", "limit_seconds": 400.0}}}, 4000)
    assert "| m | pymc/centred (10.00, at most, a bound) | bh.sample does not take this model |  |" in text
