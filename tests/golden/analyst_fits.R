#!/usr/bin/env Rscript
# Small-sample inference for the REML fits of the reference models: tests/golden/analyst_fits.json.
#
# For each model (the same data, formulas and factor levels as lme4_fits.R), fitted by
# lmerTest::lmer() with REML and lme4's defaults:
#   - every fixed effect's t test with Satterthwaite's and with Kenward-Roger's degrees of
#     freedom (lmerTest's summary(), ddf = "Satterthwaite" / "Kenward-Roger"; the latter
#     through pbkrtest), the Kenward-Roger standard errors (sqrt of pbkrtest::vcovAdj);
#   - F tests of linear contrasts (lmerTest::contest(), both methods): each model's
#     contrast matrices are written beside the results;
#   - profile-likelihood 95% intervals of the SDs, correlations and sigma
#     (lme4::confint(method = "profile", oldNames = FALSE)).
#
# Produced with R 4.2.2 (Patched 2022-11-10 r83330), lme4 1.1-31, lmerTest 3.1-3,
# pbkrtest 0.5.2, the Debian bookworm packages r-cran-lme4, r-cran-lmertest and
# r-cran-pbkrtest, on 2-core x86-64 Linux.
#
# Usage, from the repository root:
#   Rscript tests/golden/analyst_fits.R [data_dir] [output_json]
# data_dir defaults to bayeshlm/datasets, output_json to tests/golden/analyst_fits.json.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) >= 1) args[[1]] else file.path("bayeshlm", "datasets")
out_file <- if (length(args) >= 2) args[[2]] else file.path("tests", "golden", "analyst_fits.json")

id_columns <- list(sleepstudy = "subject", pastes = c("batch", "cask", "sample"), hsb = "school",
                   radon = "county")

read_dataset <- function(name) {
  ids <- id_columns[[name]]
  path <- file.path(data_dir, paste0(name, ".csv"))
  d <- read.csv(path, colClasses = setNames(rep("character", length(ids)), ids))
  for (v in ids) d[[v]] <- factor(d[[v]], levels = unique(d[[v]]))
  d
}

# Contrast matrices: rows are contrasts, columns the fixed effects in the model's order.
models <- list(
  sleepstudy_corr = list(
    dataset = "sleepstudy", formula = "reaction ~ days + (days | subject)",
    contrasts = list(days = matrix(c(0, 1), 1), both = diag(2))
  ),
  pastes = list(
    dataset = "pastes", formula = "strength ~ 1 + (1 | batch/cask)",
    contrasts = list(intercept = matrix(1, 1, 1))
  ),
  hsb_rb = list(
    dataset = "hsb", formula = "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)",
    # columns: (Intercept), ses_centered, sector, meanses, ses_centered:sector, ses_centered:meanses
    contrasts = list(
      sector = matrix(c(0, 0, 1, 0, 0, 0), 1),
      catholic_slope = matrix(c(0, 1, 0, 0, 1, 0), 1),
      cross_level = rbind(c(0, 0, 0, 0, 1, 0), c(0, 0, 0, 0, 0, 1))
    )
  ),
  radon_u_vi = list(
    dataset = "radon", formula = "log_radon ~ floor + log_uranium + (1 | county)",
    contrasts = list(uranium = matrix(c(0, 0, 1), 1), both = rbind(c(0, 1, 0), c(0, 0, 1)))
  ),
  radon_u_vs = list(
    dataset = "radon", formula = "log_radon ~ floor + log_uranium + (1 + floor | county)",
    contrasts = list(floor = matrix(c(0, 1, 0), 1), both = rbind(c(0, 1, 0), c(0, 0, 1)))
  )
)

t_tests <- function(fit, ddf) {
  co <- summary(fit, ddf = ddf)$coefficients
  lapply(setNames(seq_len(nrow(co)), rownames(co)), function(i) {
    list(estimate = co[i, "Estimate"], se = co[i, "Std. Error"], df = co[i, "df"], t = co[i, "t value"],
         p = co[i, "Pr(>|t|)"])
  })
}

f_tests <- function(fit, L, ddf) {
  res <- contest(fit, L, ddf = ddf, joint = TRUE)
  list(F = res[["F value"]], num_df = res[["NumDF"]], den_df = res[["DenDF"]], p = res[["Pr(>F)"]])
}

results <- list()
for (key in names(models)) {
  m <- models[[key]]
  data <- read_dataset(m$dataset)
  fit <- lmerTest::lmer(as.formula(m$formula), data = data, REML = TRUE)
  prof <- suppressMessages(confint(fit, method = "profile", oldNames = FALSE, level = 0.95))
  profile <- lapply(setNames(seq_len(nrow(prof)), rownames(prof)), function(i) {
    list(lower = prof[i, 1], upper = prof[i, 2])
  })
  contrasts <- lapply(m$contrasts, function(L) {
    list(L = unname(L), satterthwaite = f_tests(fit, L, "Satterthwaite"),
         kenward_roger = f_tests(fit, L, "Kenward-Roger"))
  })
  results[[key]] <- list(
    dataset = m$dataset,
    formula = m$formula,
    fixed_names = I(names(fixef(fit))),
    satterthwaite = t_tests(fit, "Satterthwaite"),
    kenward_roger = t_tests(fit, "Kenward-Roger"),
    kenward_roger_vcov = unname(as.matrix(vcovAdj(fit))),
    contrasts = contrasts,
    profile = profile
  )
}

out <- list(
  meta = list(
    created = format(Sys.time(), "%Y-%m-%d %H:%M:%S %Z"),
    R = R.version.string,
    lme4 = as.character(packageVersion("lme4")),
    lmerTest = as.character(packageVersion("lmerTest")),
    pbkrtest = as.character(packageVersion("pbkrtest")),
    source = "tests/golden/analyst_fits.R",
    note = "REML fits; profile intervals at level 0.95 for sd_*, cor_* and sigma."
  ),
  models = results
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = I(17), pretty = TRUE, null = "null", na = "null"), out_file)
cat("wrote", out_file, "\n")
