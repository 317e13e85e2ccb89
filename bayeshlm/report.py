"""A posterior fit reported the way the field reads it: random effects, ICC, fixed effects, checks.

:func:`report` gives a :class:`Report`: printed, it is a text summary in the layout of lme4 and
HLM (random effects as variances, SDs and correlations; fixed effects as estimates with their
posterior SD and interval), with the convergence diagnostics and the priors used; in a
notebook it renders as HTML. The tables underneath are tidy DataFrames.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayeshlm.family import LATENT_VARIANCE
from bayeshlm.level1 import has_level1_model
from bayeshlm.summary import RHAT_LIMIT

__all__ = ["Report", "report"]

ESS_LIMIT = 400


def _interval(x, ci_prob):
    tail = (1.0 - ci_prob) / 2.0
    return np.quantile(x, [tail, 1.0 - tail], axis=0)


@dataclass
class Report:
    """Summary tables of a posterior fit; ``str()`` is the text report, notebooks show HTML.

    Attributes
    ----------
    header : dict
        Formula, number of observations and groups, sampler settings.
    fixed : pandas.DataFrame
        One row per fixed effect: posterior mean, SD, interval, R-hat, bulk and tail ESS.
    random : pandas.DataFrame
        One row per variance component (group SDs, then the residual): posterior mean of the
        variance and of the SD, the SD's interval, R-hat and the smaller ESS.
    correlations : pandas.DataFrame
        One row per correlation of random coefficients: mean and interval.
    icc : pandas.DataFrame
        Intraclass correlations of the intercepts (when the level-1 variance is estimated).
    diagnostics : dict
        Worst R-hat and ESS over every parameter, group coefficients included.
    priors : dict
        The priors in use, by role.
    reliability : pandas.DataFrame
        With the model: each random coefficient's reliability averaged over the finest groups,
        posterior mean and interval, beside the EM value when an EM fit is given (empty
        otherwise; see :func:`bayeshlm.reliability`).
    """

    header: dict
    fixed: pd.DataFrame
    random: pd.DataFrame
    correlations: pd.DataFrame
    icc: pd.DataFrame
    diagnostics: dict
    priors: dict
    ci_prob: float = 0.95
    warnings: list = field(default_factory=list)
    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)
    level1: pd.DataFrame = field(default_factory=pd.DataFrame)

    def _header_lines(self):
        h = self.header
        groups = "; ".join(f"{k}: {v} groups" for k, v in h["n_groups"].items())
        s = h["sampler"]
        family = s.get("family", "gaussian")
        lines = [
            "Bayesian hierarchical linear model (bayeshlm posterior)" if family == "gaussian" else
            "Bayesian hierarchical linear model with Student-t level-1 residuals (bayeshlm posterior); sigma is "
            "their scale" if family == "student" else
            f"Bayesian hierarchical generalised linear model (bayeshlm posterior): {family} level 1, "
            f"{s.get('link')} link; the coefficients and SDs are on the {s.get('link')} scale",
            f" Formula: {h['formula']}",
            f" Data: {h['n_obs']} observations" + (f"; {groups}" if groups else ""),
            f" Draws: {s['chains']} chains x {s['draws']} after {s['warmup']} warm-up "
            f"(method {s['method']}, seed {s['seed']}); sampling {h['sampling_seconds']:.2f} s",
        ]
        if h.get("n_dropped_rows"):
            lines.append(f" Rows dropped for missing values: {h['n_dropped_rows']}")
        return lines

    def _diagnostic_lines(self):
        d = self.diagnostics

        def num(key, fmt, undefined):
            where = key.replace("min_", "argmin_").replace("max_", "argmax_")
            return f"n/a ({undefined})" if d.get(key) is None else f"{format(d[key], fmt)} ({d[where]})"

        lines = [f" max R-hat {num('max_rhat', '.3f', 'needs 2 chains of 4 draws')}; "
                 f"min bulk ESS {num('min_ess_bulk', '.0f', 'needs 4 draws per chain')}; "
                 f"min tail ESS {num('min_ess_tail', '.0f', 'needs 4 draws per chain')}"]
        lines += [f" WARNING: {w}" for w in self.warnings]
        return lines

    def __str__(self):
        pct = f"{100 * self.ci_prob:g}%"
        fmt = {"float_format": lambda v: f"{v:.4g}"}
        lines = self._header_lines()
        lines += ["", f"Random effects (posterior means; {pct} intervals of the SDs):"]
        lines.append(self.random.to_string(index=False, **fmt))
        if len(self.correlations):
            lines += ["", "Correlations of random coefficients:",
                      self.correlations.to_string(index=False, **fmt)]
        if len(self.level1):
            lines += ["", f"Level-1 variance model (posterior mean, SD, {pct} interval; Residual above is a row with "
                      "z = 0):", self.level1.to_string(**fmt)]
        if len(self.icc):
            scale = " on the latent scale" if "sampler" in self.header and "link" in self.header["sampler"] else ""
            lines += ["", f"Intraclass correlation{scale}: of two rows in the same group (covariates at 0):",
                      self.icc.to_string(index=False, **fmt)]
        if len(self.reliability):
            lines += ["", f"Reliability of the groups' own estimates (average over groups; {pct} interval"
                      + ("; EM plug-in)" if "em" in self.reliability else ")") + ":",
                      self.reliability.to_string(**fmt)]
        lines += ["", f"Fixed effects (posterior mean, SD, {pct} interval):", self.fixed.to_string(**fmt)]
        lines += ["", "Convergence (every parameter, group coefficients included):"]
        lines += self._diagnostic_lines()
        lines += ["", "Priors:"] + [f" {k}: {v}" for k, v in self.priors.items()]
        return "\n".join(lines)

    def __repr__(self):
        return str(self)

    def _repr_html_(self):
        def table(df, index=False):
            return df.to_html(index=index, float_format=lambda v: f"{v:.4g}", border=0)

        esc = html.escape
        head = "<br>".join(esc(line) for line in self._header_lines())
        parts = [f"<div><p><b>{head.split('<br>', 1)[0]}</b><br>{head.split('<br>', 1)[1]}</p>",
                 "<p><b>Random effects</b></p>", table(self.random)]
        if len(self.correlations):
            parts += ["<p><b>Correlations</b></p>", table(self.correlations)]
        if len(self.level1):
            parts += ["<p><b>Level-1 variance model</b></p>", table(self.level1, index=True)]
        if len(self.icc):
            parts += ["<p><b>Intraclass correlation</b></p>", table(self.icc)]
        if len(self.reliability):
            parts += ["<p><b>Reliability</b> (average over groups)</p>", table(self.reliability, index=True)]
        parts += ["<p><b>Fixed effects</b></p>", table(self.fixed, index=True),
                  "<p><b>Convergence</b><br>" + "<br>".join(esc(x) for x in self._diagnostic_lines()) + "</p>",
                  "<details><summary>Priors</summary><ul>"
                  + "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in self.priors.items()) + "</ul></details></div>"]
        return "\n".join(parts)


def _row_stats(table, name):
    row = table.loc[name]
    return float(row["r_hat"]), float(min(row["ess_bulk"], row["ess_tail"]))


def _reliability_table(model, posterior, em, ci_prob):
    """Average reliability per coefficient, posterior and (with ``em``) EM; empty where there is none."""
    from bayeshlm.reliability import reliability

    if not model.gaussian or model.crossed or not model.coef_names or not model.rows_held:
        return pd.DataFrame()
    post = reliability(model, posterior, average=True, ci_prob=ci_prob)
    table = post[["reliability", "reliability_lower", "reliability_upper"]].rename(
        columns={"reliability": "posterior", "reliability_lower": "lower", "reliability_upper": "upper"})
    if em is not None:
        table["em"] = reliability(model, em, average=True)["reliability"]
    return table


def report(posterior, *, ci_prob=0.95, model=None, em=None):
    """The summary of a posterior fit in the layout of lme4 and HLM.

    Parameters
    ----------
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample` (or :func:`bayeshlm.load`).
    ci_prob : float
        Probability of the equal-tailed intervals.
    model : Model, optional
        The model of the posterior: the report then gives the reliabilities of the finest
        groups' own estimates (Gaussian nested models).
    em : EMResult, optional
        The EM fit of the same model: its reliabilities are printed beside the posterior's.

    Returns
    -------
    Report
        Print it for the text; its attributes hold the tables.
    """
    from bayeshlm.results import flat_draws, grouping_factors
    from bayeshlm.schema import FIXED_DIM, SIGMA, coef_dim, corr_pair_dim, corr_var, sd_var
    from bayeshlm.summary import diagnostics, summary

    attrs = posterior.attrs
    if attrs.get("inference_library") != "bayeshlm" or "sampler" not in attrs or "posterior" not in posterior.children:
        raise ValueError("not a posterior drawn by bayeshlm.sample: its report needs the model's attributes "
                         "(use arviz.summary for other ArviZ results)")
    post = posterior.posterior
    table = summary(posterior, ci_prob=ci_prob)
    lb, ub = table.columns[2], table.columns[3]
    terms = [str(t) for t in post[FIXED_DIM].values]
    keys = [f"fixed[{t}]" for t in terms]
    picked = table.loc[keys]
    fixed = pd.DataFrame({"estimate": picked["mean"].values, "est_error": picked["sd"].values,
                          "lower": picked[lb].values, "upper": picked[ub].values,
                          "r_hat": picked["r_hat"].values, "ess_bulk": picked["ess_bulk"].values},
                         index=pd.Index(terms, name="term"))
    fixed["ess_tail"] = table.loc[keys, "ess_tail"].values

    factors = grouping_factors(posterior)
    rows, corr_rows, icc_rows, intercept_vars = [], [], [], []
    for factor in factors:
        g = factor.replace(":", "_")
        if sd_var(g) not in post:
            continue
        sd = flat_draws(post[sd_var(g)])
        for i, coef in enumerate(post[coef_dim(g)].values):
            lo, hi = _interval(sd[:, i], ci_prob)
            rhat, ess = _row_stats(table, f"{g}_sd[{coef}]")
            rows.append({"group": factor, "name": str(coef), "variance": float(np.mean(sd[:, i] ** 2)),
                         "sd": float(np.mean(sd[:, i])), "sd_lower": lo, "sd_upper": hi, "r_hat": rhat, "ess": ess})
            if str(coef) == "Intercept":
                intercept_vars.append((factor, sd[:, i] ** 2))
        if corr_var(g) in post:
            corr = flat_draws(post[corr_var(g)])
            for m, pair in enumerate(post[corr_pair_dim(g)].values):
                lo, hi = _interval(corr[:, m], ci_prob)
                corr_rows.append({"group": factor, "pair": str(pair), "corr": float(np.mean(corr[:, m])),
                                  "lower": lo, "upper": hi})
    level1_names = [n for n in table.index if n.split("[")[0] in ("sigma_delta", "sigma_group_sd", "nu")]
    level1 = pd.DataFrame({"estimate": table.loc[level1_names, "mean"].values,
                           "est_error": table.loc[level1_names, "sd"].values,
                           "lower": table.loc[level1_names, lb].values, "upper": table.loc[level1_names, ub].values,
                           "r_hat": table.loc[level1_names, "r_hat"].values,
                           "ess_bulk": table.loc[level1_names, "ess_bulk"].values},
                          index=pd.Index(level1_names, name="parameter"))
    one_variance = "sigma" in post and not level1_names and "sigma_group" not in post
    if "sigma" in post and not one_variance:  # sigma is a reference row's (or a t scale): no single ICC
        sigma = flat_draws(post[SIGMA])
        lo, hi = _interval(sigma, ci_prob)
        rhat, ess = _row_stats(table, "sigma")
        rows.append({"group": "Residual", "name": "", "variance": float(np.mean(sigma ** 2)),
                     "sd": float(np.mean(sigma)), "sd_lower": lo, "sd_upper": hi, "r_hat": rhat, "ess": ess})
        total = None
    elif "sigma" in post:
        sigma = flat_draws(post[SIGMA])
        lo, hi = _interval(sigma, ci_prob)
        rhat, ess = _row_stats(table, "sigma")
        rows.append({"group": "Residual", "name": "", "variance": float(np.mean(sigma ** 2)),
                     "sd": float(np.mean(sigma)), "sd_lower": lo, "sd_upper": hi, "r_hat": rhat, "ess": ess})
        total = sigma ** 2 + sum(v for _, v in intercept_vars)
        # two rows in the same group of a factor share its intercept and those of every coarser
        # factor (the factors run finest first): their correlation sums those variances
    else:
        total = None
        link = json.loads(attrs["sampler"]).get("link")
        if link in LATENT_VARIANCE and intercept_vars:
            # on the latent scale: the level-1 variance of the logistic or standard normal error
            total = LATENT_VARIANCE[link] + sum(v for _, v in intercept_vars)
    if total is not None:
        for m, (factor, _) in enumerate(intercept_vars):
            icc = sum(v for _, v in intercept_vars[m:]) / total
            lo, hi = _interval(icc, ci_prob)
            icc_rows.append({"group": factor, "icc": float(np.mean(icc)), "lower": lo, "upper": hi})
    diag = diagnostics(posterior)
    warnings = []
    if diag["max_rhat"] is not None and diag["max_rhat"] > RHAT_LIMIT:
        warnings.append(f"R-hat above {RHAT_LIMIT} ({diag['argmax_rhat']}): the chains disagree; draw more")
    ess = [v for v in (diag["min_ess_bulk"], diag["min_ess_tail"]) if v is not None]
    if not ess:
        warnings.append("too few draws to check convergence (an ESS needs 4 draws per chain): draw more")
    elif min(ess) < ESS_LIMIT:
        warnings.append(f"an ESS below {ESS_LIMIT}: intervals are imprecise; draw more")
    if int(attrs.get("interrupted", 0)):
        warnings.append("the run was interrupted: the draws are those made before the interruption")
    header = {
        "formula": attrs.get("formula", ""),
        "n_obs": attrs.get("n_obs", posterior.observed_data.sizes.get("obs", "?")
                           if "observed_data" in posterior.children else "?"),
        "n_groups": json.loads(attrs.get("n_groups", "{}")),
        "sampler": json.loads(attrs["sampler"]),
        "sampling_seconds": float(attrs.get("sampling_time", float("nan"))),
        "n_dropped_rows": int(attrs.get("n_dropped_rows", 0)),
    }
    if em is not None and model is None:
        raise ValueError("the EM reliabilities need the model: report(posterior, model=model, em=fit)")
    # a row's reliability needs its level-1 variance, which a level-1 variance model draws per row
    rel = (pd.DataFrame() if model is None or has_level1_model(model)
           else _reliability_table(model, posterior, em, ci_prob))
    return Report(header=header, fixed=fixed, random=pd.DataFrame(rows), correlations=pd.DataFrame(corr_rows),
                  icc=pd.DataFrame(icc_rows), diagnostics=diag, priors=json.loads(attrs.get("priors", "{}")),
                  ci_prob=ci_prob, warnings=warnings, reliability=rel, level1=level1)
