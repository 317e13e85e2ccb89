"""The command line: ``bayeshlm fit``, ``em``, ``summary``, ``demo`` and ``--version``.

Most tests run :func:`bayeshlm.__main__.main` in-process; one runs the installed console
script end to end. The REML references are lme4's fits of sleepstudy in
tests/golden/lme4_fits.json (key ``sleepstudy_corr``, see tests/golden/README.md).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.__main__ import main

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


def run(capsys, *argv):
    """``main(argv)`` with its exit code, standard output and standard error."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
