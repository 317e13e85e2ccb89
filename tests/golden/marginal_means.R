#!/usr/bin/env Rscript
# Estimated marginal means, trends and their contrasts: tests/golden/marginal_means.json.
#
# For each model, fitted by lmerTest::lmer() with REML (Gaussian) or lme4::glmer() (cbpp,
# binomial, Laplace and 25-point adaptive quadrature), emmeans computes:
#   - marginal means (emmeans()) of the factors named in each spec, the other factors
#     averaged with equal weights and the covariates at their means or at the values of
#     `at`; with Satterthwaite's degrees of freedom (lmer.df = "satterthwaite", through
#     lmerTest) and with Kenward-Roger's (lmer.df = "kenward-roger", through pbkrtest, which
#     also adjusts the standard errors); GLMMs on the response scale (type = "response":
#     inverse link of the link-scale mean, delta-method SE, back-transformed interval ends)
#     and on the link scale, with asymptotic (z) intervals;
#   - their pairwise differences (pairs()) and differences from the first level
#     (contrast(, "trt.vs.ctrl")), unadjusted, and for one model with Holm's and
#     Bonferroni's adjustments (emmeans widens the intervals of both by Bonferroni's);
#     a GLMM's contrasts on the response scale are odds ratios;
#   - trends (emtrends()) of a numeric predictor, averaged in the same way, and their
#     pairwise differences.
# Each row holds the spec's variables (factor levels as text, covariates as numbers) and
# estimate, se, df, lower, upper, and for contrasts the contrast's label, t and p; an
# infinite df is written as the string "Inf". `linfct` is emmeans' matrix of each row's
# coefficients on the fixed effects (lme4's order, names in `fixed_names`).
#
# The lmer fits use the tight optimiser settings of lme4_tight.R, so that the variance
# components (on which the degrees of freedom depend) agree with bayeshlm's REML optimum to
# well below the tolerances of tests/test_marginal.py.
#
# Factors made from the data, identically in tests/test_marginal.py:
#   hsb:        sector_f = "catholic" where sector == 1, else "public"
#   sleepstudy: day_f = "d" followed by days ("d0" ... "d9")
#   radon:      floor_f = "first" where floor == 1, else "basement"
#   cbpp:       period_f = factor(period) (levels "1" ... "4"; C(period) in Python)
# Levels are in sorted order, as both R's factor() and formulaic order them.
#
# Produced with R 4.2.2 (Patched 2022-11-10 r83330), lme4 1.1-31, lmerTest 3.1-3,
# pbkrtest 0.5.2, emmeans 1.8.4-1, the Debian bookworm packages, on 2-core x86-64 Linux.
#
# Usage, from the repository root:
#   Rscript tests/golden/marginal_means.R [data_dir] [output_json]
# data_dir defaults to bayeshlm/datasets, output_json to tests/golden/marginal_means.json.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(emmeans)
  library(jsonlite)
})

emm_options(lmerTest.limit = 1e6, pbkrtest.limit = 1e6)

args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) >= 1) args[[1]] else file.path("bayeshlm", "datasets")
out_file <- if (length(args) >= 2) args[[2]] else file.path("tests", "golden", "marginal_means.json")

id_columns <- list(sleepstudy = "subject", hsb = "school", radon = "county", cbpp = "herd")

read_dataset <- function(name) {
  ids <- id_columns[[name]]
  path <- file.path(data_dir, paste0(name, ".csv"))
  d <- read.csv(path, colClasses = setNames(rep("character", length(ids)), ids))
  for (v in ids) d[[v]] <- factor(d[[v]], levels = unique(d[[v]]))
  if (name == "hsb") d$sector_f <- factor(ifelse(d$sector == 1, "catholic", "public"))
  if (name == "sleepstudy") d$day_f <- factor(paste0("d", d$days))
  if (name == "radon") d$floor_f <- factor(ifelse(d$floor == 1, "first", "basement"))
  if (name == "cbpp") d$period_f <- factor(d$period)
  d
}

control <- lmerControl(optimizer = "nloptwrap",
                       optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 1e-12,
                                      ftol_rel = 1e-14, maxeval = 1e5))

# Per model: the emmeans specs (by = the variables of the means, at = emmeans' `at`), the
# contrasts of some of them, and the trends.
models <- list(
  hsb = list(
    dataset = "hsb", formula = "mathach ~ ses_centered * sector_f + meanses + (ses_centered | school)",
    means = list(
      sector = list(by = "sector_f"),
      sector_meanses = list(by = c("sector_f", "meanses"), at = list(meanses = c(-0.5, 0.5))),
      overall = list(by = character(0))
    ),
    contrasts = list(
      sector_pairs = list(of = "sector", method = "pairwise", adjust = "none"),
      sector_meanses_pairs = list(of = "sector_meanses", method = "pairwise", adjust = "none")
    ),
    trends = list(ses_by_sector = list(by = "sector_f", var = "ses_centered", pairs = TRUE))
  ),
  sleepstudy_days_f = list(
    dataset = "sleepstudy", formula = "reaction ~ day_f + (1 | subject)",
    means = list(day = list(by = "day_f")),
    contrasts = list(
      day_pairs = list(of = "day", method = "pairwise", adjust = "none"),
      day_pairs_holm = list(of = "day", method = "pairwise", adjust = "holm"),
      day_pairs_bonferroni = list(of = "day", method = "pairwise", adjust = "bonferroni"),
      day_vs_d0 = list(of = "day", method = "trt.vs.ctrl", adjust = "none")
    ),
    trends = list()
  ),
  sleepstudy_corr = list(
    dataset = "sleepstudy", formula = "reaction ~ days + (days | subject)",
    means = list(days = list(by = "days", at = list(days = c(0, 4.5, 9)))),
    contrasts = list(days_pairs = list(of = "days", method = "pairwise", adjust = "none")),
    trends = list(days = list(by = character(0), var = "days", pairs = FALSE))
  ),
  radon_floor = list(
    dataset = "radon", formula = "log_radon ~ floor_f + log_uranium + (1 | county)",
    means = list(floor = list(by = "floor_f")),
    contrasts = list(floor_pairs = list(of = "floor", method = "pairwise", adjust = "none")),
    trends = list(uranium_by_floor = list(by = "floor_f", var = "log_uranium", pairs = FALSE))
  ),
  radon_floor_vs = list(
    dataset = "radon", formula = "log_radon ~ floor_f + log_uranium + (1 + floor_f | county)",
    means = list(floor = list(by = "floor_f")),
    contrasts = list(floor_pairs = list(of = "floor", method = "pairwise", adjust = "none")),
    trends = list()
  ),
  cbpp = list(
    dataset = "cbpp", formula = "cbind(incidence, size - incidence) ~ period_f + (1 | herd)",
    family = "binomial",
    means = list(period = list(by = "period_f"), overall = list(by = character(0))),
    contrasts = list(
      period_pairs = list(of = "period", method = "pairwise", adjust = "none"),
      period_vs_1 = list(of = "period", method = "trt.vs.ctrl", adjust = "none")
    ),
    trends = list()
  )
)

spec_formula <- function(by) {
  as.formula(if (length(by) == 0) "~ 1" else paste("~", paste(by, collapse = " * ")))
}

num <- function(x) {
  x <- as.numeric(x)
  lapply(x, function(v) if (is.finite(v)) v else if (is.na(v)) NA else if (v > 0) "Inf" else "-Inf")
}

# A summary as a list of rows with the column names of tests/test_marginal.py.
rows_of <- function(s, by) {
  s <- as.data.frame(s)
  pick <- function(choices) {
    hit <- intersect(choices, names(s))
    if (length(hit)) s[[hit[1]]] else NULL
  }
  est <- pick(c("emmean", "prob", "rate", "response", "estimate", "odds.ratio", "ratio",
                grep("\\.trend$", names(s), value = TRUE)))
  cols <- list(estimate = est, se = s$SE, df = s$df, lower = pick(c("lower.CL", "asymp.LCL")),
               upper = pick(c("upper.CL", "asymp.UCL")), t = pick(c("t.ratio", "z.ratio")),
               p = pick("p.value"))
  lapply(seq_len(nrow(s)), function(i) {
    row <- list()
    if ("contrast" %in% names(s)) row$contrast <- as.character(s$contrast[i])
    for (v in by) row[[v]] <- if (is.factor(s[[v]])) as.character(s[[v]][i]) else as.numeric(s[[v]][i])
    for (k in names(cols)) if (!is.null(cols[[k]])) row[[k]] <- num(cols[[k]][i])[[1]]
    row
  })
}

contrast_of <- function(emm, method, adjust) {
  if (method == "pairwise") pairs(emm, adjust = adjust) else contrast(emm, method, adjust = adjust)
}

gaussian_results <- function(fit, m, data) {
  out <- list(means = list(), contrasts = list(), trends = list())
  for (name in names(m$means)) {
    s <- m$means[[name]]
    entry <- list(by = I(s$by), at = s$at)
    for (ddf in c("satterthwaite", "kenward-roger")) {
      emm <- emmeans(fit, spec_formula(s$by), at = s$at, lmer.df = ddf)
      entry[[gsub("-", "_", ddf)]] <- rows_of(summary(emm, infer = TRUE), s$by)
      if (ddf == "satterthwaite") entry$linfct <- unname(emm@linfct)
    }
    out$means[[name]] <- entry
  }
  for (name in names(m$contrasts)) {
    cm <- m$contrasts[[name]]
    s <- m$means[[cm$of]]
    entry <- list(of = cm$of, method = cm$method, adjust = cm$adjust)
    for (ddf in c("satterthwaite", "kenward-roger")) {
      emm <- emmeans(fit, spec_formula(s$by), at = s$at, lmer.df = ddf)
      entry[[gsub("-", "_", ddf)]] <- rows_of(summary(contrast_of(emm, cm$method, cm$adjust), infer = TRUE),
                                              character(0))
    }
    out$contrasts[[name]] <- entry
  }
  for (name in names(m$trends)) {
    tm <- m$trends[[name]]
    entry <- list(by = I(tm$by), var = tm$var)
    for (ddf in c("satterthwaite", "kenward-roger")) {
      tr <- emtrends(fit, spec_formula(tm$by), var = tm$var, lmer.df = ddf)
      key <- gsub("-", "_", ddf)
      entry[[key]] <- rows_of(summary(tr, infer = TRUE), tm$by)
      if (tm$pairs) entry[[paste0(key, "_pairs")]] <- rows_of(summary(pairs(tr, adjust = "none"), infer = TRUE),
                                                             character(0))
    }
    out$trends[[name]] <- entry
  }
  out
}

glmm_results <- function(fit, m) {
  out <- list(fixef = as.list(fixef(fit)), se = as.list(sqrt(diag(as.matrix(vcov(fit))))), means = list(),
              contrasts = list())
  for (name in names(m$means)) {
    s <- m$means[[name]]
    entry <- list(by = I(s$by))
    for (type in c("response", "link")) {
      emm <- emmeans(fit, spec_formula(s$by), type = type)
      entry[[type]] <- rows_of(summary(emm, infer = TRUE), s$by)
    }
    out$means[[name]] <- entry
  }
  for (name in names(m$contrasts)) {
    cm <- m$contrasts[[name]]
    s <- m$means[[cm$of]]
    entry <- list(of = cm$of, method = cm$method, adjust = cm$adjust)
    for (type in c("response", "link")) {
      emm <- emmeans(fit, spec_formula(s$by), type = type)
      entry[[type]] <- rows_of(summary(contrast_of(emm, cm$method, cm$adjust), infer = TRUE), character(0))
    }
    out$contrasts[[name]] <- entry
  }
  out
}

results <- list()
for (key in names(models)) {
  m <- models[[key]]
  data <- read_dataset(m$dataset)
  entry <- list(dataset = m$dataset, formula = m$formula, family = if (is.null(m$family)) "gaussian" else m$family)
  if (is.null(m$family)) {
    fit <- lmerTest::lmer(as.formula(m$formula), data = data, REML = TRUE, control = control)
    entry$fixed_names <- I(names(fixef(fit)))
    entry$fixef <- as.list(fixef(fit))
    entry <- c(entry, gaussian_results(fit, m, data))
  } else {
    entry$fits <- list()
    for (agq in c(1, 25)) {
      fit <- glmer(as.formula(m$formula), data = data, family = binomial, nAGQ = agq)
      entry$fixed_names <- I(names(fixef(fit)))
      entry$fits[[paste0("nAGQ", agq)]] <- glmm_results(fit, m)
    }
  }
  results[[key]] <- entry
}

out <- list(
  meta = list(
    created = format(Sys.time(), "%Y-%m-%d %H:%M:%S %Z"),
    R = R.version.string,
    lme4 = as.character(packageVersion("lme4")),
    lmerTest = as.character(packageVersion("lmerTest")),
    pbkrtest = as.character(packageVersion("pbkrtest")),
    emmeans = as.character(packageVersion("emmeans")),
    source = "tests/golden/marginal_means.R",
    note = paste("REML lmer fits (tight optimiser settings) and glmer Laplace / nAGQ = 25 fits; intervals",
                 "at level 0.95; an infinite df is the string \"Inf\".")
  ),
  models = results
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = I(17), pretty = TRUE, null = "null", na = "null"), out_file)
cat("wrote", out_file, "\n")
