#!/usr/bin/env Rscript
# lme4 fits with precision weights (and one Gaussian offset): tests/golden/weights_fits.json.
#
# lmer(..., weights = w): the level-1 variance of row i is sigma^2 / w_i, sigma estimated.
# The weights are made from the data by deterministic rules that tests/test_weights.py
# repeats on the same CSV files:
#   sleepstudy: w = 1 + (days %% 3)       (1, 2, 3, 1, 2, 3, ...)
#   hsb:        w = 1 + sector            (1 for public schools, 2 for Catholic ones)
# and the offset of sleepstudy_offset is 2 * days (a known slope of 2 per day).
#
# Each model is fitted with REML = TRUE and REML = FALSE, with the optimiser run to tight
# tolerances as in lme4_tight.R:
#   lmerControl(optimizer = "nloptwrap",
#               optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 1e-12,
#                              ftol_rel = 1e-14, maxeval = 1e5))
# Recorded: logLik (lme4's, which includes + sum(log w) / 2), the fixed effects and their
# standard errors (sqrt(diag(vcov))), sigma, the SDs and correlations of the random effects
# (VarCorr) and theta; for the REML fit of hsb_w also the 95% profile intervals of the SD and
# sigma (confint(method = "profile", oldNames = FALSE), which profiles the ML likelihood).
#
# Produced with R 4.2.2 (Patched 2022-11-10 r83330), lme4 1.1-31, Matrix 1.5-3, nloptr 2.0.3
# (Debian bookworm packages r-base-core and r-cran-lme4), on 2-core x86-64 Linux.
#
# Usage, from the repository root:
#   Rscript tests/golden/weights_fits.R [data_dir] [output_json]
# defaults: bayeshlm/datasets and tests/golden/weights_fits.json.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) >= 1) args[[1]] else file.path("bayeshlm", "datasets")
out_file <- if (length(args) >= 2) args[[2]] else file.path("tests", "golden", "weights_fits.json")

id_columns <- list(sleepstudy = "subject", hsb = "school")

read_dataset <- function(name) {
  ids <- id_columns[[name]]
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")),
                colClasses = setNames(rep("character", length(ids)), ids))
  for (v in ids) d[[v]] <- factor(d[[v]], levels = unique(d[[v]]))
  d
}

# the weight column w of each data set, by the rules above
with_weights <- function(name, d) {
  if (name == "sleepstudy") d$w <- 1 + (d$days %% 3)
  if (name == "hsb") d$w <- 1 + d$sector
  d
}

models <- list(
  sleepstudy_w = c("sleepstudy", "reaction ~ days + (days | subject)"),
  hsb_w = c("hsb", "mathach ~ ses_centered + (1 | school)"),
  sleepstudy_offset = c("sleepstudy", "reaction ~ days + offset(2 * days) + (days | subject)")
)

control <- lmerControl(optimizer = "nloptwrap",
                       optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 1e-12,
                                      ftol_rel = 1e-14, maxeval = 1e5))

`%||%` <- function(a, b) if (is.null(a)) b else a

fit_one <- function(form, data, reml, profile = FALSE) {
  fit <- lmer(as.formula(form), data = data, REML = reml, weights = w, control = control)
  vc <- VarCorr(fit)
  random <- lapply(names(vc), function(g) {
    m <- vc[[g]]
    terms <- colnames(m)
    r <- attr(m, "correlation")
    cor <- list()
    if (length(terms) > 1) {
      for (i in seq_len(length(terms) - 1)) for (j in (i + 1):length(terms)) {
        cor[[paste0(terms[i], "|", terms[j])]] <- r[i, j]
      }
    }
    list(terms = I(terms), sd = as.list(setNames(as.numeric(attr(m, "stddev")), terms)),
         cor = if (length(cor)) cor else NULL)
  })
  names(random) <- names(vc)
  fe <- fixef(fit)
  se <- sqrt(diag(as.matrix(vcov(fit))))
  out <- list(logLik = as.numeric(logLik(fit)), sigma = sigma(fit),
              fixef = as.list(setNames(unname(fe), names(fe))),
              fixef_se = as.list(setNames(unname(se), names(fe))),
              random = random, theta = I(unname(getME(fit, "theta"))),
              optimizer_messages = I(fit@optinfo$conv$lme4$messages %||% character(0)))
  if (profile) {
    prof <- suppressMessages(confint(fit, parm = "theta_", method = "profile", oldNames = FALSE, level = 0.95))
    out$profile <- lapply(setNames(seq_len(nrow(prof)), rownames(prof)), function(i) {
      list(lower = prof[i, 1], upper = prof[i, 2])
    })
  }
  out
}

out <- list(
  description = paste("lme4 REML and ML fits with precision weights (weights = w) and tight optimiser",
                      "tolerances; see tests/golden/weights_fits.R for the weights and the control settings."),
  r_version = R.version.string,
  lme4_version = as.character(packageVersion("lme4")),
  weights = list(sleepstudy = "1 + (days %% 3)", hsb = "1 + sector"),
  models = lapply(models, function(m) {
    d <- with_weights(m[[1]], read_dataset(m[[1]]))
    list(dataset = m[[1]], formula = m[[2]],
         fits = list(REML = fit_one(m[[2]], d, TRUE, profile = m[[1]] == "hsb"), ML = fit_one(m[[2]], d, FALSE)))
  })
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), out_file)
cat("wrote", out_file, "\n")
