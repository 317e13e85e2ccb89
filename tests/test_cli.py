"""The command line: ``bayeshlm fit``, ``em``, ``summary``, ``demo`` and ``--version``.

Most tests run :func:`bayeshlm.__main__.main` in-process; one runs the installed console
script end to end. The REML references are lme4's fits of sleepstudy in
tests/golden/lme4_fits.json (key ``sleepstudy_corr``, see tests/golden/README.md).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayeshlm as bh
import bayeshlm.__main__ as cli
from bayeshlm.__main__ import main
from bayeshlm.summary import diagnostics

FORMULA = "reaction ~ days + (days | subject)"
TINY = ["--chains", "2", "--draws", "100", "--warmup", "100"]
# what the tqdm progress bar of bh.sample writes: its label, unit, bar blocks and carriage returns
PROGRESS_MARKS = ("sampling:", "sweep/s", "%|", "\r", "\u2588")


@pytest.fixture(scope="module")
def sleep_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sleepstudy.csv"
    bh.load_dataset("sleepstudy").to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def sleep_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sleepstudy.parquet"
    bh.load_dataset("sleepstudy").to_parquet(path)
    return path


CONVERGENCE = "bayeshlm: warning: R-hat "


def run(capsys, *argv, keep_convergence=False):
    """``main(argv)`` with its exit code, standard output and standard error.

    The tests' runs are short on purpose, so R-hat may exceed 1.01: the warning that says so
    is left out of the standard error unless ``keep_convergence``.
    """
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err
    if not keep_convergence:
        err = "".join(line for line in err.splitlines(True) if not line.startswith(CONVERGENCE))
    return code, captured.out, err


def test_a_run_whose_chains_disagree_says_so_on_standard_error(sleep_csv, tmp_path, capsys):
    code, _, err = run(capsys, "fit", sleep_csv, FORMULA, "--chains", "4", "--draws", "8", "--warmup", "0",
                       "--seed", "2", "--quiet", "--out", tmp_path / "fit.nc", keep_convergence=True)
    assert code == 0
    assert err.startswith(CONVERGENCE) and "the chains disagree" in err


def printed_fixed(out):
    """The estimates of the "Fixed effects:" table printed by ``bayeshlm em``."""
    lines = out.split("Fixed effects:\n", 1)[1].splitlines()[1:]
    return {line.split()[0]: float(line.split()[1]) for line in lines if line.strip()}


def test_demo_prints_a_summary(capsys):
    assert main(["demo", "--draws", "100", "--warmup", "100", "--chains", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    for text in ("fixed[ses_centered:sector]", "school_sd[Intercept]", "school_corr", "r_hat", "ess_bulk",
                 "ess_tail", "eti95_lb", "sampling time", "min-ESS per second", "sigma: HalfStudentT",
                 "by REML (empirical Bayes)", "difference_in_sd"):
        assert text in out, text


def test_module_entry_point_rejects_unknown_commands():
    proc = subprocess.run([sys.executable, "-m", "bayeshlm", "nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"bayeshlm {bh.__version__}\n"


def test_fit_on_parquet_saves_a_posterior_that_summary_prints(sleep_parquet, tmp_path, capsys):
    out_file = tmp_path / "fit.nc"
    code, out, err = run(capsys, "fit", sleep_parquet, FORMULA, *TINY, "--seed", 1, "--out", out_file, "--quiet")
    assert code == 0, err
    assert err == ""
    assert "days" in out
    post = bh.load(out_file)
    assert list(post.posterior["fixed"].coords["fixed_term"].values) == ["Intercept", "days"]
    assert post.posterior.sizes["chain"] == 2 and post.posterior.sizes["draw"] == 100
    assert post.attrs["seed"] == 1
    code, out, err = run(capsys, "summary", out_file)
    assert code == 0, err
    for name in ("Intercept", "days", "sigma", "subject"):
        assert name in out, name


def test_fit_sends_progress_to_stderr_not_stdout(sleep_csv, tmp_path, capsys):
    code, out, err = run(capsys, "fit", sleep_csv, FORMULA, *TINY, "--method", "gibbs", "--seed", 2,
                         "--out", tmp_path / "fit.zarr")
    assert code == 0, err
    assert "days" in out
    for mark in PROGRESS_MARKS:
        assert mark not in out, mark
    assert "sampling:" in err and "100%" in err
    assert (tmp_path / "fit.zarr").is_dir()
    assert bh.load(tmp_path / "fit.zarr").posterior.sizes["chain"] == 2


@pytest.mark.parametrize("method, title", [("reml", "REML fit"), ("ml", "Maximum likelihood fit")])
def test_em_matches_lme4(sleep_csv, tmp_path, capsys, lme4_fits, method, title):
    ref = lme4_fits["models"]["sleepstudy_corr"]["fits"][method.upper()]["fixef"]
    expected = {"Intercept": ref["(Intercept)"]["estimate"], "days": ref["days"]["estimate"]}
    assert round(expected["Intercept"], 3) == 251.405 and round(expected["days"], 3) == 10.467
    out_file = tmp_path / "em.nc"
    code, out, err = run(capsys, "em", sleep_csv, FORMULA, "--method", method, "--out", out_file)
    assert code == 0, err
    assert out.startswith(title)
    assert "Random effects:" in out and "sd[days]" in out
    printed, saved = printed_fixed(out), bh.load(out_file).fixed
    for name, value in expected.items():
        assert printed[name] == pytest.approx(value, abs=5e-4), name
        assert saved[name] == pytest.approx(value, abs=5e-4), name
    code, summary_out, err = run(capsys, "summary", out_file)
    assert code == 0, err
    assert summary_out.startswith(title) and printed_fixed(summary_out) == printed


def test_em_missing_values_are_refused_or_dropped(tmp_path, capsys):
    data = bh.load_dataset("sleepstudy")
    data.loc[3, "reaction"] = np.nan
    path = tmp_path / "holes.tsv"
    data.to_csv(path, sep="\t", index=False)
    code, out, err = run(capsys, "em", path, FORMULA)
    assert code == 2 and out == ""
    assert err.startswith("bayeshlm: error: ") and "reaction" in err
    code, out, err = run(capsys, "em", path, FORMULA, "--missing", "drop")
    assert code == 0, err
    assert "Fixed effects:" in out


def test_em_with_known_sd_estimates_no_residual_sd(tmp_path, capsys):
    data = bh.load_dataset("sleepstudy").assign(se=25.0)
    path = tmp_path / "known.csv"
    data.to_csv(path, index=False)
    code, out, err = run(capsys, "em", path, FORMULA, "--known-sd", "se")
    assert code == 0, err
    assert "sd[days]" in out
    assert "\nsigma" not in out


def test_em_of_a_binomial_response_with_quadrature(tmp_path, capsys):
    """``cbind`` passes the safe mode, and the fit is glmer's 25-point one (tests/golden/glmm_fits.json)."""
    path = tmp_path / "cbpp.csv"
    bh.load_dataset("cbpp").to_csv(path, index=False)
    formula = "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)"
    code, out, err = run(capsys, "em", path, formula, "--family", "binomial", "--n-agq", "25")
    assert code == 0, err
    assert "logLik: -91.9834" in out  # lme4's -50.0050 plus the saturated -41.9784
    code, out, err = run(capsys, "fit", path, formula, "--family", "binomial", "--quiet", "--draws", "200",
                         "--warmup", "200", "--seed", "3", "--out", tmp_path / "fit.nc")
    assert code == 0, err
    assert "herd" in out and "C(period)[T.4]" in out
    # 56 trials a herd: the Newton proposal by default; --glm-move chooses, and a move it cannot take is refused
    assert json.loads(bh.load(tmp_path / "fit.nc").attrs["sampler"])["glm_move"] == "newton"
    code, out, err = run(capsys, "fit", path, formula, "--family", "binomial", "--quiet", "--draws", "50",
                         "--warmup", "50", "--seed", "3", "--glm-move", "augment", "--out", tmp_path / "aug.nc")
    assert code == 0, err
    assert json.loads(bh.load(tmp_path / "aug.nc").attrs["sampler"])["glm_move"] == "augment"
    code, out, err = run(capsys, "fit", path, formula, "--family", "binomial", "--quiet", "--draws", "50",
                         "--glm-move", "newton", "--method", "mh", "--out", tmp_path / "no.nc")
    assert code == 2 and "method='gibbs'" in err
    code, out, err = run(capsys, "em", path, "cbind(incidence, exec('x')) ~ 1 + (1 | herd)", "--family", "binomial")
    assert code == 2 and "cbind" in err


def test_fit_of_counts_with_an_exposure(tmp_path, capsys):
    """A Poisson model with ``offset(log(...))`` is sampled from the command line and its report names the family."""
    data = bh.load_dataset("grouseticks")
    data["days"] = 1.0 + (data["height"] % 3)  # an exposure, for the offset
    path = tmp_path / "ticks.csv"
    data.to_csv(path, index=False)
    code, out, err = run(capsys, "fit", path, "ticks ~ C(year) + offset(log(days)) + (1 | location)", "--family",
                         "poisson", "--quiet", "--draws", "100", "--warmup", "100", "--seed", "1",
                         "--out", tmp_path / "fit.nc")
    assert code == 0, err
    assert "poisson level 1, log link" in out and "C(year)[T.96]" in out


@pytest.mark.parametrize("argv, message", [
    (["fit", "{dir}/absent.csv", FORMULA], "data file not found: {dir}/absent.csv"),
    (["em", "{dir}/absent.parquet", FORMULA], "data file not found: {dir}/absent.parquet"),
    (["fit", "{dir}/data.xlsx", FORMULA], "unsupported extension '.xlsx'; use one of .csv, .txt, .tsv, .parquet"),
    (["fit", "{csv}", "reaction ~ days + (days | subjekt)", "--quiet"], "column 'subjekt'"),
    (["em", "{csv}", "reaction ~ dayz + (days | subject)"], "column 'dayz'"),
    (["em", "{csv}", FORMULA, "--known-sd", "se"], "column 'se'"),
    (["em", "{csv}", "reaction ~ days + (days | subject"], "unbalanced parentheses"),
    (["fit", "{csv}", "reaction days", "--quiet"], "the formula has no '~'"),
    (["fit", "{csv}", FORMULA, "--out", "{dir}/no/such/dir/fit.nc"], "output directory does not exist"),
    (["summary", "{dir}/absent.nc"], "result file not found: {dir}/absent.nc"),
    (["summary", "{csv}"], "cannot read {csv}"),
    (["em", "{csv}", FORMULA, "--prior", "sd"], "write ROLE=DISTRIBUTION"),
    (["em", "{csv}", FORMULA, "--prior", "sd=__import__('os')"], "the distribution must be one of"),
    (["em", "{csv}", FORMULA, "--prior", "sd=HalfNormal(x)"], "arguments must be numbers"),
    (["em", "{csv}", FORMULA, "--prior", "sd=HalfNormal(-1)"], "sigma"),
    (["em", "{csv}", FORMULA, "--prior", "sd[hours]=HalfNormal(1)"], "hours"),
])
def test_user_errors_are_reported_without_traceback(sleep_csv, tmp_path, capsys, argv, message):
    fill = {"dir": tmp_path, "csv": sleep_csv}
    (tmp_path / "data.xlsx").write_bytes(b"")
    code, out, err = run(capsys, *(a.format(**fill) for a in argv))
    assert code == 2
    assert out == ""
    assert err.startswith("bayeshlm: error: ")
    assert message.format(**fill) in err.splitlines()[0]
    assert "Traceback" not in err


def test_fit_with_priors_from_the_command_line(sleep_csv, tmp_path, capsys):
    priors = ["--prior", "sd=HalfNormal(20)", "--prior", "fixed[days]=Normal(mu=-1, sigma=5)", "--prior", "corr=LKJ(2)"]
    code, out, err = run(capsys, "fit", sleep_csv, FORMULA, *TINY, "--seed", 1, "--quiet", "--out",
                         tmp_path / "fit.nc", *priors)
    assert code == 0, err
    assert "sd[days]: HalfNormal(sigma=20)" in out and "fixed[days]: Normal(mu=-1, sigma=5)" in out
    assert "corr: LKJ(eta=2)" in out


def test_console_script_end_to_end(sleep_csv, tmp_path):
    script = Path(sys.executable).with_name("bayeshlm")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bayeshlm"]
    out_file = tmp_path / "fit.nc"
    # no --seed: the run draws its own, which must still fit in the saved file
    proc = subprocess.run([*command, "fit", str(sleep_csv), FORMULA, *TINY, "--out", str(out_file)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "days" in proc.stdout
    for mark in PROGRESS_MARKS:
        assert mark not in proc.stdout, mark
    assert "sampling:" in proc.stderr
    post = bh.load(out_file)
    assert list(post.posterior["fixed"].coords["fixed_term"].values) == ["Intercept", "days"]
    proc = subprocess.run([*command, "summary", str(out_file)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Intercept" in proc.stdout and "days" in proc.stdout


# --- issue 18, part 4: no uncaught exception, no crash ------------------------------------------

TINY_DATA = {
    "three_rows": pd.DataFrame({"y": [1.0, 2.0, 1.5], "x": [0.5, 0.7, 0.1], "g": ["a", "b", "b"]}),
    "two_rows": pd.DataFrame({"y": [1.0, 2.0], "x": [0.5, 0.7], "g": ["a", "b"]}),
    "one_row": pd.DataFrame({"y": [1.0], "x": [0.5], "g": ["a"]}),
    "no_rows": pd.DataFrame({"y": [], "x": [], "g": []}),
}


def _one_error_line(err, code):
    """Standard error holds only warnings and, for a failure, one error line at the end."""
    lines = err.splitlines()
    assert "Traceback" not in err
    assert all(line.startswith(("bayeshlm: warning: ", "bayeshlm: error: ")) for line in lines), err
    if code:
        assert lines and lines[-1].startswith("bayeshlm: error: ") and sum("error:" in x for x in lines) == 1


@pytest.mark.parametrize("data", sorted(TINY_DATA))
@pytest.mark.parametrize("formula", ["y ~ x + (1 | g)", "y ~ x + (x | g)", "y ~ 1 + (1 | g)", "y ~ x"])
@pytest.mark.parametrize("command", [["em"], ["em", "--method", "ml"], ["fit", "--quiet", *TINY]])
def test_tiny_data_never_raises(tmp_path, capsys, data, formula, command):
    path = tmp_path / f"{data}.csv"
    TINY_DATA[data].to_csv(path, index=False)
    extra = ["--out", tmp_path / "fit.nc"] if command[0] == "fit" else []
    code, out, err = run(capsys, command[0], path, formula, *command[1:], *extra)
    assert code in (0, 1, 2)  # a fit, a sampler failure (1) or a user error (2): never an exception
    _one_error_line(err, code)


def test_the_division_by_zero_of_an_ml_fit_on_three_rows(tmp_path, capsys):
    """Three rows, two fixed effects, a group variance: the ML optimiser drives sigma^2 to 0.

    Today the likelihood kernel divides by that zero; the command line says what it means.
    Should the fit one day succeed, its summary is printed instead.
    """
    path = tmp_path / "three.csv"
    TINY_DATA["three_rows"].to_csv(path, index=False)
    code, out, err = run(capsys, "em", path, "y ~ x + (1 | g)", "--method", "ml")
    _one_error_line(err, code)
    if code:
        assert code == 2 and out == ""
        assert err.splitlines()[-1] == (
            "bayeshlm: error: the ML fit failed numerically (ZeroDivisionError: division by zero) on 3 observations "
            "with 2 fixed effects and 2 variance parameters: the data are too few or too extreme for this model; "
            "simplify it (fewer random terms or predictors) or add data")
    else:
        assert "Fixed effects:" in out


@pytest.mark.parametrize("command, target, what", [(["em"], "fit_em", "the REML fit"),
                                                   (["fit", "--quiet", *TINY], "sample", "sampling")])
def test_arithmetic_errors_of_a_fit_are_user_errors(sleep_csv, tmp_path, capsys, monkeypatch, command, target, what):
    def divide(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(bh, target, divide)
    code, out, err = run(capsys, command[0], sleep_csv, FORMULA, *command[1:], "--out", tmp_path / "x.nc")
    assert code == 2 and out == ""
    assert err == (f"bayeshlm: error: {what} failed numerically (ZeroDivisionError: division by zero) on 180 "
                   "observations with 2 fixed effects and 4 variance parameters: the data are too few or too extreme "
                   "for this model; simplify it (fewer random terms or predictors) or add data\n")


@pytest.mark.parametrize("draws", ["1", "3"])
def test_too_few_draws_for_the_report_are_refused_before_sampling(sleep_csv, tmp_path, capsys, monkeypatch, draws):
    monkeypatch.setattr(bh, "sample", lambda *a, **k: pytest.fail("sampled"))
    code, out, err = run(capsys, "fit", sleep_csv, FORMULA, "--draws", draws, "--out", tmp_path / "fit.nc")
    assert code == 2 and out == ""
    assert err == (f"bayeshlm: error: --draws {draws}: the report's convergence checks (R-hat, ESS) need at least 4 "
                   "draws per chain; ask for more (bayeshlm.sample accepts fewer)\n")
    code, out, err = run(capsys, "demo", "--draws", draws)
    assert code == 2 and err.startswith(f"bayeshlm: error: --draws {draws}: ")


def test_four_draws_give_a_report(sleep_csv, tmp_path, capsys):
    code, out, err = run(capsys, "fit", sleep_csv, FORMULA, "--draws", 4, "--chains", 1, "--warmup", 20,
                         "--seed", 3, "--quiet", "--out", tmp_path / "fit.nc")
    assert code == 0, err
    assert "max R-hat n/a (needs 2 chains of 4 draws); min bulk ESS" in out


@pytest.mark.filterwarnings("ignore:Found chain dimension to be longer than draw dimension")
def test_the_report_of_a_single_draw(capsys):
    """The library's report never fails for lack of draws: it says what it cannot compute."""
    model = bh.hlm(FORMULA, bh.load_dataset("sleepstudy"))
    post = bh.sample(model, draws=1, warmup=10, chains=2, seed=4, progress=False)
    text = str(bh.report(post))
    assert ("max R-hat n/a (needs 2 chains of 4 draws); min bulk ESS n/a (needs 4 draws per chain); "
            "min tail ESS n/a (needs 4 draws per chain)") in text
    assert "WARNING: too few draws to check convergence (an ESS needs 4 draws per chain): draw more" in text
    assert diagnostics(post)["min_ess_bulk"] is None and np.isnan(diagnostics(post)["min_ess_per_second"])


@pytest.mark.parametrize("draws", [10**11, 10**12])  # 37 TB and 3.7 PB: more than any machine
def test_draws_that_cannot_fit_in_memory_are_refused_before_sampling(sleep_csv, tmp_path, capsys, monkeypatch,
                                                                     draws):
    monkeypatch.setattr(bh, "sample", lambda *a, **k: pytest.fail("sampled"))
    code, out, err = run(capsys, "fit", sleep_csv, FORMULA, "--draws", draws, "--out", tmp_path / "fit.nc")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"bayeshlm: error: 4 chains x {draws} draws need about ")
    for text in ("of memory for the draws (posterior ", "is available; ask for fewer draws (--draws ",
                 "--keep-group-draws 100 (with --group-moments", "--log-likelihood none"):
        assert text in err, text


def test_memory_options_reach_the_sampler(sleep_csv, tmp_path, capsys):
    out_file = tmp_path / "fit.nc"
    code, out, err = run(capsys, "fit", sleep_csv, FORMULA, *TINY, "--seed", 2, "--quiet", "--out", out_file,
                         "--keep-group-draws", 5, "--group-moments", "--log-likelihood", "none")
    assert code == 0, err
    post = bh.load(out_file)
    assert post.posterior.sizes["subject"] == 5
    assert "group_moments" in post.children and "log_likelihood" not in post.children
    with pytest.raises(SystemExit) as info:  # argparse's usage line and error
        main(["fit", str(sleep_csv), FORMULA, "--keep-group-draws", "some"])
    assert info.value.code == 2
    assert "must be all, none or a number of groups, got 'some'" in capsys.readouterr().err


def _foreign_files(tmp_path):
    import h5py
    import zarr

    ds = xr.Dataset({"t": ("x", np.arange(3.0))}, attrs={"title": "another tool's file"})
    ds.to_netcdf(tmp_path / "foreign.nc", engine="h5netcdf")
    ds.to_zarr(tmp_path / "foreign.zarr", mode="w", consolidated=False)
    arr = zarr.open_array(tmp_path / "array.zarr", mode="w", shape=(3,), dtype="f8")
    arr[:] = 1.0
    zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2).create_array("a", shape=(3,), dtype="f8")
    (tmp_path / "empty.zarr").mkdir()
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["a"] = np.arange(3)
    (tmp_path / "junk.nc").write_bytes(b"not a netCDF file at all")
    (tmp_path / "old.nc").write_bytes(b"CDF\x01" + bytes(28))
    from arviz_base import from_dict

    from_dict({"posterior": {"mu": np.zeros((2, 10))}}).to_netcdf(tmp_path / "arviz.nc", engine="h5netcdf")


NOT_OURS = "holds no result of bayeshlm fit or em (neither a posterior drawn by bayeshlm nor a REML/ML fit); " \
           "for other ArviZ files use arviz.summary"


@pytest.mark.parametrize("name, message", [
    ("foreign.nc", "{p} " + NOT_OURS),
    ("foreign.zarr", "{p} " + NOT_OURS),
    ("plain.h5", "{p} " + NOT_OURS),
    ("arviz.nc", "{p} " + NOT_OURS),
    ("array.zarr", "cannot read {p}: a single Zarr array, not a Zarr store of results (a group)"),
    ("v2.zarr", "cannot read {p} as a Zarr store of results: "),
    ("empty.zarr", "cannot read {p} as a Zarr store of results: "),
    ("junk.nc", "cannot read {p}: not a netCDF-4 (HDF5) file or Zarr store"),
    ("old.nc", "cannot read {p}: a netCDF-3 file; results are netCDF-4 (HDF5) files"),
])
def test_summary_of_a_foreign_file_is_one_error_line(tmp_path, capsys, name, message):
    _foreign_files(tmp_path)
    path = tmp_path / name
    code, out, err = run(capsys, "summary", path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("bayeshlm: error: " + message.format(p=path))


def test_summary_of_a_damaged_file(sleep_csv, tmp_path, capsys):
    import h5py

    out_file = tmp_path / "em.nc"
    assert run(capsys, "em", sleep_csv, FORMULA, "--out", out_file)[0] == 0
    with h5py.File(out_file, "r+") as f:
        f.attrs["sigma"] = "1.0"
    code, out, err = run(capsys, "summary", out_file)
    assert code == 2 and out == ""
    assert err.startswith(f"bayeshlm: error: {out_file} is damaged: /@attrs no longer match the checksums")


def test_the_report_is_printed_before_the_file_is_written(sleep_csv, tmp_path, capsys, monkeypatch):
    def full(result, path, **kwargs):
        raise OSError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(bh, "save", full)
    code, out, err = run(capsys, "fit", sleep_csv, FORMULA, *TINY, "--seed", 1, "--quiet", "--out",
                         tmp_path / "fit.nc")
    assert code == 2
    assert "Fixed effects (posterior mean" in out and "days" in out
    assert err == f"bayeshlm: error: cannot write {tmp_path / 'fit.nc'}: No space left on device\n"


_FULL_DISK_CLI = textwrap.dedent("""
    import resource, signal, sys
    import bayeshlm as bh
    from bayeshlm.__main__ import main

    real_save = bh.save

    def save_on_a_full_disk(result, path, **kwargs):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
        return real_save(result, path, **kwargs)

    bh.save = save_on_a_full_disk
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("command, name", [(["fit", *TINY, "--seed", "1", "--quiet"], "fit.nc"),
                                           (["fit", *TINY, "--seed", "1", "--quiet"], "fit.zarr"),
                                           (["em"], "em.nc")])
def test_a_full_disk_during_save_is_an_error_not_a_crash(sleep_csv, tmp_path, command, name):
    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK_CLI)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.run([sys.executable, str(script), command[0], str(sleep_csv), FORMULA, *command[1:],
                           "--out", str(out_dir / name)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]  # never -11 (SIGSEGV)
    assert "days" in proc.stdout  # the report or the estimates came first
    stderr = "".join(line for line in proc.stderr.splitlines(True) if not line.startswith(CONVERGENCE))
    assert stderr == (f"bayeshlm: error: cannot write {out_dir / name}: File too large (the disk is full, a "
                           f"quota or a file-size limit was reached); nothing was written to {out_dir / name}\n")
    assert list(out_dir.iterdir()) == []


def test_an_interrupted_run_is_saved_beside_a_complete_result(sleep_csv, tmp_path, capsys, monkeypatch):
    out_file = tmp_path / "fit.nc"
    assert run(capsys, "fit", sleep_csv, FORMULA, *TINY, "--seed", 1, "--quiet", "--out", out_file)[0] == 0
    complete = bh.load(out_file)
    stopped = complete.isel(draw=slice(0, 30))
    stopped.attrs = {**complete.attrs, "interrupted": 1}
    monkeypatch.setattr(bh, "sample", lambda *a, **k: stopped)
    code, out, err = run(capsys, "fit", sleep_csv, FORMULA, *TINY, "--out", out_file)
    assert code == 1
    beside = tmp_path / "fit.interrupted.nc"
    assert err.splitlines() == [
        f"bayeshlm: warning: the run was interrupted and {out_file} holds another result, which is kept; the draws "
        f"of the interrupted run are saved to {beside}",
        f"posterior saved to {beside}",
        "bayeshlm: sampling was interrupted; the saved draws are incomplete",
    ]
    assert bh.load(out_file).posterior.sizes["draw"] == 100 and bh.load(beside).posterior.sizes["draw"] == 30


def test_warnings_are_one_line_each(tmp_path, capsys):
    path = tmp_path / "two.csv"
    TINY_DATA["two_rows"].to_csv(path, index=False)
    code, out, err = run(capsys, "em", path, "y ~ x + (1 | g)")
    assert code == 0
    lines = err.splitlines()
    assert lines and all(line.startswith("bayeshlm: warning: ") for line in lines)
    assert lines[0].startswith("bayeshlm: warning: every group of 'g' has a single row")


def test_a_bug_is_one_line_too(sleep_csv, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for /: 'NoneType' and 'float'")

    monkeypatch.setattr(cli, "report_text", broken)
    tree = xr.DataTree()
    tree.attrs.update({"inference_library": "bayeshlm", "sampler": "{}"})
    monkeypatch.setattr(bh, "load", lambda path: tree)
    monkeypatch.delenv("BAYESHLM_TRACEBACK", raising=False)
    code, out, err = run(capsys, "summary", sleep_csv)
    assert code == 1
    assert err == ("bayeshlm: error: unexpected TypeError: unsupported operand type(s) for /: 'NoneType' and 'float' "
                   "(a bug in bayeshlm: please report it with the command; BAYESHLM_TRACEBACK=1 shows where it "
                   "happened)\n")
    monkeypatch.setenv("BAYESHLM_TRACEBACK", "1")
    with pytest.raises(TypeError):
        main(["summary", str(sleep_csv)])


def test_an_output_that_would_replace_a_directory_is_refused_before_sampling(sleep_csv, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setattr(bh, "sample", lambda *a, **k: pytest.fail("sampled"))
    (tmp_path / "results.nc").mkdir()
    code, out, err = run(capsys, "fit", sleep_csv, FORMULA, "--out", tmp_path / "results.nc")
    assert code == 2
    assert err.startswith(f"bayeshlm: error: {tmp_path / 'results.nc'} is a directory; a netCDF result is a file")
    os.rmdir(tmp_path / "results.nc")


def test_fit_and_em_take_a_variance_model_and_student_residuals(sleep_csv, tmp_path, capsys):
    """--sigma and --family student reach the model; the saved posterior holds sigma_delta and nu."""
    out = tmp_path / "fit.nc"
    code, text, _ = run(capsys, "fit", sleep_csv, FORMULA, *TINY, "--seed", "1", "--quiet", "--family", "student",
                        "--sigma", "~ days", "--out", out)
    assert code == 0 and "sigma_delta" in text and "nu" in text
    saved = bh.load(out)
    assert {"sigma_delta", "nu"} <= set(saved.posterior.data_vars)
    code, text, _ = run(capsys, "em", sleep_csv, FORMULA, "--sigma", "~ days")
    assert code == 0 and "days" in text
    # the sigma formula is checked in the safe mode as well
    code, _, err = run(capsys, "fit", sleep_csv, FORMULA, "--sigma", "~ __import__('os')", "--out", out)
    assert code == 2 and "safe mode" in err
