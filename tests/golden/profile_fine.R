#!/usr/bin/env Rscript
# lme4's profile-likelihood intervals on a fine grid: tests/golden/profile_fine.json.
#
# confint(fit, method = "profile") (as analyst_fits.R records it) interpolates its limits with
# a spline through profile points spaced 1/8 of the cutoff apart in zeta; where the profile
# bends (an SD whose profile flattens towards zero, a correlation near +-1) the spline's
# limits are off by up to a few per cent. Here the same models are profiled with points 1/64
# of the cutoff apart (delta.cutoff = 1/64, maxpts = 2000), which takes the interpolation
# error below 1e-6 where the profile is smooth. As confint() does, profile() refits the REML
# fit by ML first (lme4's devfun2 calls refitML): these are ML profiles.
#
# Produced with R 4.2.2 (Patched 2022-11-10 r83330), lme4 1.1-31, the Debian bookworm
# package r-cran-lme4, on 2-core x86-64 Linux (about 80 s).
#
# Usage, from the repository root:
#   Rscript tests/golden/profile_fine.R [data_dir] [output_json]
# data_dir defaults to bayeshlm/datasets, output_json to tests/golden/profile_fine.json.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) >= 1) args[[1]] else file.path("bayeshlm", "datasets")
out_file <- if (length(args) >= 2) args[[2]] else file.path("tests", "golden", "profile_fine.json")

id_columns <- list(sleepstudy = "subject", pastes = c("batch", "cask", "sample"), hsb = "school",
                   radon = "county")

read_dataset <- function(name) {
  ids <- id_columns[[name]]
  path <- file.path(data_dir, paste0(name, ".csv"))
  d <- read.csv(path, colClasses = setNames(rep("character", length(ids)), ids))
  for (v in ids) d[[v]] <- factor(d[[v]], levels = unique(d[[v]]))
  d
}

models <- list(
  sleepstudy_corr = list(dataset = "sleepstudy", formula = "reaction ~ days + (days | subject)"),
  pastes = list(dataset = "pastes", formula = "strength ~ 1 + (1 | batch/cask)"),
  hsb_rb = list(dataset = "hsb",
                formula = "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)"),
  radon_u_vi = list(dataset = "radon", formula = "log_radon ~ floor + log_uranium + (1 | county)"),
  radon_u_vs = list(dataset = "radon", formula = "log_radon ~ floor + log_uranium + (1 + floor | county)")
)

results <- list()
for (key in names(models)) {
  m <- models[[key]]
  fit <- lmer(as.formula(m$formula), data = read_dataset(m$dataset), REML = TRUE)
  prof <- suppressWarnings(profile(fit, which = "theta_", signames = FALSE, delta.cutoff = 1 / 64,
                                   maxpts = 2000))
  ci <- suppressWarnings(confint(prof, level = 0.95))
  results[[key]] <- list(
    dataset = m$dataset,
    formula = m$formula,
    profile = lapply(setNames(seq_len(nrow(ci)), rownames(ci)), function(i) {
      list(lower = ci[i, 1], upper = ci[i, 2])
    })
  )
}

out <- list(
  meta = list(
    created = format(Sys.time(), "%Y-%m-%d %H:%M:%S %Z"),
    R = R.version.string,
    lme4 = as.character(packageVersion("lme4")),
    source = "tests/golden/profile_fine.R",
    note = paste("REML fits profiled by lme4 (which refits them by ML) with delta.cutoff = 1/64;",
                 "95% intervals of the SDs, correlations and sigma.")
  ),
  models = results
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = I(17), pretty = TRUE, null = "null", na = "null"), out_file)
cat("wrote", out_file, "\n")
