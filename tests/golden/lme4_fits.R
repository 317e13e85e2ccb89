#!/usr/bin/env Rscript
# Regenerate the lme4 part of tests/golden/lme4_fits.json from the bundled CSV files.
#
# The committed lme4_fits.json was produced by R 4.2.2 (Patched 2022-11-10 r83330),
# lme4 1.1-31, Matrix 1.5-3 and nloptr 2.0.3, all Debian bookworm packages
# (r-base-core, r-cran-lme4), on 2-core x86-64 Linux with the reference BLAS.
# With other versions the estimates should agree to the optimiser's tolerance,
# not to the last bit, and the timings will differ.
#
# Usage, from the repository root:
#   Rscript tests/golden/lme4_fits.R [data_dir] [output_json]
# data_dir defaults to bayeshlm/datasets, output_json to tests/golden/lme4_fits.json.
#
# Every model is fitted by lmer() with its defaults (optimizer "nloptwrap", i.e.
# NLOPT_LN_BOBYQA; predictors neither centred nor scaled), once with REML = TRUE
# and once with REML = FALSE. Grouping columns are read as text and turned into
# factors whose levels follow the order of first appearance in the CSV.
#
# The "eight_schools" block (exact posterior by numerical integration) is not
# computed here: if output_json already exists, that block is read from it and
# written back unchanged.
#
# Requires the R packages lme4 and jsonlite.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) >= 1) args[[1]] else file.path("bayeshlm", "datasets")
out_file <- if (length(args) >= 2) args[[2]] else file.path("tests", "golden", "lme4_fits.json")

# Columns that identify groups, per data set.
id_columns <- list(
  sleepstudy = "subject",
  dyestuff = "batch",
  pastes = c("batch", "cask", "sample"),
  hsb = "school",
  radon = "county"
)

models <- list(
  sleepstudy_corr = list(
    dataset = "sleepstudy",
    formula = "reaction ~ days + (days | subject)",
    notes = NULL
  ),
  sleepstudy_uncorr = list(
    dataset = "sleepstudy",
    formula = "reaction ~ days + (1 | subject) + (0 + days | subject)",
    notes = NULL
  ),
  dyestuff = list(
    dataset = "dyestuff",
    formula = "yield ~ 1 + (1 | batch)",
    notes = NULL
  ),
  pastes = list(
    dataset = "pastes",
    formula = "strength ~ 1 + (1 | batch/cask)",
    notes = paste(
      "Casks are nested in batches and their labels a-c repeat in every batch;",
      "lme4 builds the factor 'cask:batch' (30 levels, one per value of 'sample')."
    )
  ),
  hsb_null = list(
    dataset = "hsb",
    formula = "mathach ~ 1 + (1 | school)",
    notes = "Variance-components model; 'derived' holds tau00 and ICC = tau00 / (tau00 + sigma2)."
  ),
  hsb_rb = list(
    dataset = "hsb",
    formula = "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)",
    notes = paste(
      "Model of Raudenbush & Bryk (2002), Table 4.5. ses_centered is ses minus the",
      "school's sample mean; meanses is MEANSES from the school file; sector 1 = Catholic."
    )
  ),
  hsb_rb_samplemean = list(
    dataset = "hsb",
    formula = "mathach ~ ses_centered * (sector + ses_school_mean) + (ses_centered | school)",
    notes = "As hsb_rb, with the school's sample mean of ses in place of the school-file MEANSES."
  ),
  radon_vi = list(
    dataset = "radon",
    formula = "log_radon ~ floor + (1 | county)",
    notes = "Varying-intercept model of Gelman & Hill (2007), section 12.4."
  ),
  radon_u_vi = list(
    dataset = "radon",
    formula = "log_radon ~ floor + log_uranium + (1 | county)",
    notes = "Gelman & Hill (2007), section 12.6: varying intercept with a county-level predictor."
  ),
  radon_u_vs = list(
    dataset = "radon",
    formula = "log_radon ~ floor + log_uranium + (1 + floor | county)",
    notes = "Varying intercept and floor slope, with the county-level uranium predictor."
  )
)

read_dataset <- function(name) {
  ids <- id_columns[[name]]
  path <- file.path(data_dir, paste0(name, ".csv"))
  d <- read.csv(path, colClasses = setNames(rep("character", length(ids)), ids))
  for (v in ids) d[[v]] <- factor(d[[v]], levels = unique(d[[v]]))
  d
}

# One entry per VarCorr() block; lme4 names a second block on the same factor
# "<factor>.1" and the blocks of (1 | batch/cask) "cask:batch" and "batch".
summarise_varcorr <- function(fit) {
  vc <- VarCorr(fit)
  blocks <- lapply(names(vc), function(g) {
    m <- vc[[g]]
    terms <- colnames(m)
    k <- length(terms)
    cov <- matrix(as.numeric(m), k, k)
    cor <- NULL
    cov_matrix <- NULL
    if (k > 1) {
      r <- attr(m, "correlation")
      cor <- list()
      for (i in seq_len(k - 1)) {
        for (j in (i + 1):k) cor[[paste0(terms[i], "|", terms[j])]] <- r[i, j]
      }
      cov_matrix <- cov
    }
    list(
      terms = I(terms),
      sd = as.list(setNames(as.numeric(attr(m, "stddev")), terms)),
      variance = as.list(setNames(diag(cov), terms)),
      cor = cor,
      cov_matrix = cov_matrix
    )
  })
  names(blocks) <- names(vc)
  blocks
}

# Conditional modes and conditional SDs per grouping factor; ranef() merges all
# blocks on one factor, so sleepstudy_uncorr has a single "subject" entry here.
summarise_ranef <- function(fit) {
  re <- as.data.frame(ranef(fit, condVar = TRUE))
  groups <- unique(as.character(re$grpvar))
  out <- lapply(groups, function(g) {
    rows <- re[as.character(re$grpvar) == g, ]
    term <- as.character(rows$term)
    terms <- unique(term)
    pick <- function(column) {
      setNames(lapply(terms, function(t) I(rows[[column]][term == t])), terms)
    }
    list(
      levels = I(as.character(rows$grp[term == terms[1]])),
      mode = pick("condval"),
      cond_sd = pick("condsd")
    )
  })
  names(out) <- groups
  out
}

fit_model <- function(key, form, data, reml) {
  warns <- character(0)
  timing <- system.time(
    fit <- withCallingHandlers(
      lmer(form, data = data, REML = reml),
      warning = function(w) {
        warns <<- c(warns, conditionMessage(w))
        invokeRestart("muffleWarning")
      }
    )
  )

  fe <- fixef(fit)
  V <- as.matrix(vcov(fit))
  se <- sqrt(diag(V))
  fixef_list <- lapply(seq_along(fe), function(i) {
    list(estimate = unname(fe[i]), se = unname(se[i]), t = unname(fe[i] / se[i]))
  })
  names(fixef_list) <- names(fe)

  ll <- logLik(fit)
  theta <- getME(fit, "theta")
  out <- list(
    REML = isREML(fit),
    nobs = nobs(fit),
    ngrps = as.list(ngrps(fit)),
    fixef = fixef_list,
    vcov_fixef = list(names = I(names(fe)), matrix = unname(V)),
    random = summarise_varcorr(fit),
    sigma = sigma(fit),
    sigma2 = sigma(fit)^2,
    logLik = as.numeric(ll),
    logLik_kind = if (reml) "REML (restricted) log-likelihood" else "log-likelihood",
    df = attr(ll, "df"),
    minus2_objective = -2 * as.numeric(ll),
    AIC = AIC(fit),
    BIC = BIC(fit),
    theta = I(unname(theta)),
    theta_names = I(names(theta)),
    singular = isSingular(fit),
    optimizer = fit@optinfo$optimizer,
    convergence_messages = I(as.character(fit@optinfo$conv$lme4$messages)),
    warnings = I(warns),
    time_s = list(
      elapsed = timing[["elapsed"]],
      user = timing[["user.self"]],
      system = timing[["sys.self"]]
    )
  )
  if (reml) {
    out$REML_criterion <- REMLcrit(fit)
  } else {
    out$deviance <- deviance(fit)
  }
  out$ranef <- summarise_ranef(fit)

  if (key == "hsb_null") {
    tau00 <- out$random$school$variance[["(Intercept)"]]
    out$derived <- list(tau00 = tau00, ICC = tau00 / (tau00 + out$sigma2))
  }
  out
}

results <- list()
for (key in names(models)) {
  m <- models[[key]]
  data <- read_dataset(m$dataset)
  form <- as.formula(m$formula)
  fits <- list(
    REML = fit_model(key, form, data, reml = TRUE),
    ML = fit_model(key, form, data, reml = FALSE)
  )
  results[[key]] <- list(
    dataset = m$dataset,
    file = file.path(data_dir, paste0(m$dataset, ".csv")),
    formula = m$formula,
    notes = m$notes,
    fits = fits
  )
  message("fitted ", key)
}

meta <- list(
  created = format(Sys.time(), "%Y-%m-%dT%H:%M:%S%z", tz = "UTC"),
  R = R.version.string,
  lme4 = as.character(packageVersion("lme4")),
  Matrix = as.character(packageVersion("Matrix")),
  nloptr = as.character(packageVersion("nloptr")),
  platform = R.version$platform,
  cores = parallel::detectCores(),
  blas = unname(extSoftVersion()[["BLAS"]]),
  source = "generated by tests/golden/lme4_fits.R",
  defaults = paste(
    "lmer() defaults: optimizer nloptwrap (NLOPT_LN_BOBYQA), predictors neither centred",
    "nor scaled; factor levels in order of first appearance in the CSV"
  ),
  timing = "time_s: system.time() of the lmer() call only (reading the data excluded)",
  precision = "doubles written by jsonlite::toJSON(digits = NA), enough digits to read back the same double"
)

doc <- list(meta = meta, models = results)
if (file.exists(out_file)) {
  previous <- read_json(out_file, simplifyVector = FALSE)
  if (!is.null(previous$eight_schools)) doc$eight_schools <- previous$eight_schools
}

json <- toJSON(doc, auto_unbox = TRUE, digits = NA, null = "null", na = "null", pretty = TRUE)
writeLines(json, out_file, useBytes = TRUE)
message("wrote ", out_file)
