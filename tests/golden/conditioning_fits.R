#!/usr/bin/env Rscript
# Reference fits for the conditioning tests (tests/test_conditioning.py): lme4 on data whose
# predictor or response has a large mean against its spread, and on the same data centred.
#
# Produced with R 4.2.2, lme4 1.1-31, Matrix 1.5-3 (Debian bookworm packages r-base-core,
# r-cran-lme4, r-cran-jsonlite) on 2-core x86-64 Linux. Usage, from the repository root:
#   Rscript tests/golden/conditioning_fits.R
# It writes tests/golden/conditioning_fits.json.
#
# Every fit is lmer() with its defaults (REML and ML). Grouping columns are read as text and
# made factors with levels in order of first appearance.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

read_data <- function(path, id) {
  cc <- setNames(rep("character", length(id)), id)
  d <- read.csv(path, colClasses = cc)
  for (v in id) d[[v]] <- factor(d[[v]], levels = unique(d[[v]]))
  d
}

year <- read_data(file.path("tests", "golden", "year_panel.csv"), "unit")
sleep <- read_data(file.path("bayeshlm", "datasets", "sleepstudy.csv"), "subject")

cases <- list(
  year_raw = list(data = year, formula = "y ~ year + (year | unit)",
                  transform = "none"),
  year_centred = list(data = transform(year, year = year - 2013.5),
                      formula = "y ~ year + (year | unit)", transform = "year - 2013.5"),
  sleep_plus_1e5 = list(data = transform(sleep, reaction = reaction + 1e5),
                        formula = "reaction ~ days + (days | subject)", transform = "reaction + 1e5"),
  sleep_plus_1e8 = list(data = transform(sleep, reaction = reaction + 1e8),
                        formula = "reaction ~ days + (days | subject)", transform = "reaction + 1e8")
)

fit_one <- function(case, reml) {
  warnings_seen <- character(0)
  f <- withCallingHandlers(
    lmer(as.formula(case$formula), data = case$data, REML = reml),
    warning = function(w) {
      warnings_seen <<- c(warnings_seen, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      warnings_seen <<- c(warnings_seen, conditionMessage(m))
      invokeRestart("muffleMessage")
    }
  )
  vc <- as.data.frame(VarCorr(f))
  cf <- summary(f)$coefficients
  list(
    fixef = lapply(setNames(rownames(cf), rownames(cf)),
                   function(n) list(estimate = cf[n, "Estimate"], se = cf[n, "Std. Error"])),
    varcor = lapply(seq_len(nrow(vc)), function(i) as.list(vc[i, c("grp", "var1", "var2", "sdcor")])),
    sigma = sigma(f),
    logLik = as.numeric(logLik(f)),
    singular = isSingular(f),
    messages = c(warnings_seen, unlist(f@optinfo$conv$lme4$messages))
  )
}

out <- list(
  meta = list(
    created = format(Sys.time(), "%Y-%m-%dT%H:%M:%SZ", tz = "UTC"),
    R = R.version.string,
    lme4 = as.character(packageVersion("lme4")),
    Matrix = as.character(packageVersion("Matrix"))
  ),
  models = lapply(cases, function(case) list(
    formula = case$formula,
    transform = case$transform,
    fits = list(REML = fit_one(case, TRUE), ML = fit_one(case, FALSE))
  ))
)
write(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null", na = "null"),
      file.path("tests", "golden", "conditioning_fits.json"))
