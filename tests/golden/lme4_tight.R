#!/usr/bin/env Rscript
# lme4 fits of the reference models with the optimiser run to tight tolerances.
#
# lmer()'s default BOBYQA stopping rule leaves weakly determined variance components of
# two-dimensional random parts a few 1e-5 (relative) from the optimum. These fits use
#   lmerControl(optimizer = "nloptwrap",
#               optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 1e-12,
#                              ftol_rel = 1e-14, maxeval = 1e5))
# and are the reference for parameter agreement to 1e-5 (tests/test_em.py).
#
# Produced with R 4.2.2, lme4 1.1-31, Matrix 1.5-3, nloptr 2.0.3 (Debian bookworm
# packages r-base-core and r-cran-lme4), on 2-core x86-64 Linux.
#
# Usage, from the repository root:
#   Rscript tests/golden/lme4_tight.R [data_dir] [output_json]
# defaults: bayeshlm/datasets and tests/golden/lme4_tight.json.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) >= 1) args[[1]] else file.path("bayeshlm", "datasets")
out_file <- if (length(args) >= 2) args[[2]] else file.path("tests", "golden", "lme4_tight.json")

id_columns <- list(sleepstudy = "subject", dyestuff = "batch", pastes = c("batch", "cask", "sample"),
                   hsb = "school", radon = "county")
models <- list(
  sleepstudy_corr = c("sleepstudy", "reaction ~ days + (days | subject)"),
  sleepstudy_uncorr = c("sleepstudy", "reaction ~ days + (1 | subject) + (0 + days | subject)"),
  dyestuff = c("dyestuff", "yield ~ 1 + (1 | batch)"),
  pastes = c("pastes", "strength ~ 1 + (1 | batch/cask)"),
  hsb_null = c("hsb", "mathach ~ 1 + (1 | school)"),
  hsb_rb = c("hsb", "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)"),
  radon_vi = c("radon", "log_radon ~ floor + (1 | county)"),
  radon_u_vi = c("radon", "log_radon ~ floor + log_uranium + (1 | county)"),
  radon_u_vs = c("radon", "log_radon ~ floor + log_uranium + (1 + floor | county)")
)

read_dataset <- function(name) {
  ids <- id_columns[[name]]
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")),
                colClasses = setNames(rep("character", length(ids)), ids))
  for (v in ids) d[[v]] <- factor(d[[v]], levels = unique(d[[v]]))
  d
}

control <- lmerControl(optimizer = "nloptwrap",
                       optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 1e-12,
                                      ftol_rel = 1e-14, maxeval = 1e5))

fit_one <- function(form, data, reml) {
  fit <- lmer(as.formula(form), data = data, REML = reml, control = control)
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
  list(logLik = as.numeric(logLik(fit)), sigma = sigma(fit),
       fixef = as.list(setNames(unname(fe), names(fe))),
       fixef_se = as.list(setNames(unname(se), names(fe))),
       random = random, theta = I(unname(getME(fit, "theta"))),
       optimizer_messages = I(fit@optinfo$conv$lme4$messages %||% character(0)))
}
`%||%` <- function(a, b) if (is.null(a)) b else a

out <- list(
  description = paste("lme4 ML and REML fits with tight optimiser tolerances;",
                      "see tests/golden/lme4_tight.R for the control settings."),
  r_version = R.version.string,
  lme4_version = as.character(packageVersion("lme4")),
  models = lapply(models, function(m) {
    d <- read_dataset(m[[1]])
    list(dataset = m[[1]], formula = m[[2]],
         fits = list(REML = fit_one(m[[2]], d, TRUE), ML = fit_one(m[[2]], d, FALSE)))
  })
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), out_file)
cat("wrote", out_file, "\n")
