#!/usr/bin/env Rscript
# nlme fits with a model of the level-1 variance: tests/golden/variance_model.json.
#
# lme(..., weights = varIdent(form = ~ 1 | f)): the level-1 SD of the rows of level k of f is
# sigma * ratio_k, ratio 1 at the first level (the reference); lme(..., weights =
# varExp(form = ~ x)): the level-1 variance of row i is sigma^2 exp(2 t x_i). bayeshlm writes
# both as sigma^2 exp(z_i' delta) (hlm(sigma = "~ z")): delta = 2 log(ratio) for an indicator
# z of a level, delta = 2 t for a continuous z (docs/design.md, "Heterogeneous level-1 variance").
# The models and the columns made from the data (tests/test_variance_model.py repeats them):
#   hsb:        mathach ~ ses_centered * sector + meanses, random = ~ ses_centered | school,
#               varIdent(form = ~ 1 | sector_f), sector_f = factor(sector) (reference 0, public)
#   sleepstudy: reaction ~ days, random = ~ days | subject,
#               varIdent(form = ~ 1 | late_f), late_f = factor(as.integer(days >= 5)) (reference 0),
#               and varExp(form = ~ days)
# Each model is fitted with method = "REML" and "ML", with tight tolerances:
#   lmeControl(maxIter = 500, msMaxIter = 1000, msMaxEval = 5000, niterEM = 100,
#              tolerance = 1e-12, msTol = 1e-14, pnlsTol = 1e-12, opt = "nlminb")
# Recorded: logLik, the fixed effects and their standard errors (sqrt(diag(vcov))), sigma, the
# variance function's parameters (coef(..., unconstrained = FALSE): the SD ratios of varIdent,
# t of varExp) and their approximate 95% intervals (intervals(fit, which = "var-cov"), nlme's
# on the log scale for varIdent; null where nlme cannot compute them), the random effects' SDs and correlation (getVarCov).
#
# Produced with R 4.2.2 (Patched 2022-11-10 r83330), nlme 3.1-162, jsonlite 1.8.4 (Debian
# bookworm packages), on 2-core x86-64 Linux.
#
# Usage, from the repository root:
#   Rscript tests/golden/variance_model.R [data_dir] [output_json]
# defaults: bayeshlm/datasets and tests/golden/variance_model.json.

suppressPackageStartupMessages({
  library(nlme)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) >= 1) args[[1]] else file.path("bayeshlm", "datasets")
out_file <- if (length(args) >= 2) args[[2]] else file.path("tests", "golden", "variance_model.json")

id_columns <- list(sleepstudy = "subject", hsb = "school")

read_dataset <- function(name) {
  ids <- id_columns[[name]]
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")),
                colClasses = setNames(rep("character", length(ids)), ids))
  for (v in ids) d[[v]] <- factor(d[[v]], levels = unique(d[[v]]))
  if (name == "hsb") d$sector_f <- factor(d$sector)
  if (name == "sleepstudy") d$late_f <- factor(as.integer(d$days >= 5))
  d
}

control <- lmeControl(maxIter = 500, msMaxIter = 1000, msMaxEval = 5000, niterEM = 100,
                      tolerance = 1e-12, msTol = 1e-14, pnlsTol = 1e-12, opt = "nlminb")

models <- list(
  hsb_ident = list(dataset = "hsb", fixed = "mathach ~ ses_centered * sector + meanses",
                   random = "~ ses_centered | school", variance = "varIdent(form = ~ 1 | sector_f)"),
  sleepstudy_ident = list(dataset = "sleepstudy", fixed = "reaction ~ days", random = "~ days | subject",
                          variance = "varIdent(form = ~ 1 | late_f)"),
  sleepstudy_exp = list(dataset = "sleepstudy", fixed = "reaction ~ days", random = "~ days | subject",
                        variance = "varExp(form = ~ days)")
)

fit_one <- function(m, data, method) {
  fit <- lme(as.formula(m$fixed), random = as.formula(m$random), data = data,
             weights = eval(parse(text = m$variance)), method = method, control = control)
  V <- getVarCov(fit)
  terms <- colnames(V)
  sd <- sqrt(diag(V))
  R <- cov2cor(V)
  cor <- list()
  for (i in seq_len(length(terms) - 1)) for (j in (i + 1):length(terms)) {
    cor[[paste0(terms[i], "|", terms[j])]] <- R[i, j]
  }
  vf <- coef(fit$modelStruct$varStruct, unconstrained = FALSE)
  iv <- tryCatch(intervals(fit, which = "var-cov")$varStruct, error = function(e) NULL)
  fe <- fixef(fit)
  list(logLik = as.numeric(logLik(fit)), sigma = fit$sigma,
       fixef = as.list(fe), fixef_se = as.list(sqrt(diag(vcov(fit)))),
       varfunc = as.list(vf),
       varfunc_interval = if (is.null(iv)) NULL else
         lapply(setNames(seq_len(nrow(iv)), rownames(iv)),
                function(i) list(lower = iv[i, "lower"], est = iv[i, "est."], upper = iv[i, "upper"])),
       random = list(terms = I(terms), sd = as.list(setNames(unname(sd), terms)), cor = cor))
}

out <- list(
  description = paste("nlme REML and ML fits with varIdent and varExp level-1 variance functions and tight",
                      "tolerances; see tests/golden/variance_model.R for the models and the control settings."),
  r_version = R.version.string,
  nlme_version = as.character(packageVersion("nlme")),
  models = lapply(models, function(m) {
    d <- read_dataset(m$dataset)
    c(m, list(fits = list(REML = fit_one(m, d, "REML"), ML = fit_one(m, d, "ML"))))
  })
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), out_file)
cat("wrote", out_file, "\n")
