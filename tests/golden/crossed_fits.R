# lme4 fits of the crossed (cross-classified) reference model, written to crossed_fits.json.
#
#   Rscript tests/golden/crossed_fits.R     (from the repository root)
#
# Reads bayeshlm/datasets/scotssec.csv (the file bayeshlm bundles) and, where the R package
# mlmRev is installed, checks it value by value against mlmRev::ScotsSec first.
suppressMessages({library(lme4); library(jsonlite)})
df <- read.csv("bayeshlm/datasets/scotssec.csv")
if (requireNamespace("mlmRev", quietly = TRUE)) {
  ref <- mlmRev::ScotsSec
  stopifnot(nrow(ref) == nrow(df), all(ref$attain == df$attain), all(ref$verbal == df$verbal),
            all(as.character(ref$sex) == df$sex), all(ref$social == df$social),
            all(as.integer(as.character(ref$primary)) == df$primary),
            all(as.integer(as.character(ref$second)) == df$second))
  cat("scotssec.csv matches mlmRev::ScotsSec\n")
}
df$primary <- factor(df$primary); df$second <- factor(df$second); df$sex <- factor(df$sex)
form <- attain ~ verbal + sex + (1 | primary) + (1 | second)
fit_one <- function(reml) {
  t <- system.time(m <- lmer(form, df, REML = reml))[["elapsed"]]
  vc <- as.data.frame(VarCorr(m))
  list(fixef = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))),
       sigma = sigma(m), logLik = as.numeric(logLik(m)),
       sd = list(primary = vc$sdcor[vc$grp == "primary"], second = vc$sdcor[vc$grp == "second"]),
       ranef = list(primary = ranef(m)$primary[, 1], second = ranef(m)$second[, 1]),
       ranef_labels = list(primary = rownames(ranef(m)$primary), second = rownames(ranef(m)$second)),
       time_s = t)
}
# simulated subjects x items with random slopes, subjects nested in groups (make_crossed_panel.py)
panel <- read.csv("tests/golden/crossed_panel.csv")
fit_panel <- function(form, reml) {
  t <- system.time(m <- lmer(form, panel, REML = reml,
                             control = lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))))[["elapsed"]]
  vc <- as.data.frame(VarCorr(m))
  vc$var1[is.na(vc$var1)] <- ""; vc$var2[is.na(vc$var2)] <- ""
  list(fixef = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))), sigma = sigma(m),
       logLik = as.numeric(logLik(m)),
       varcor = lapply(seq_len(nrow(vc)), function(i) list(grp = vc$grp[i], var1 = vc$var1[i], var2 = vc$var2[i],
                                                          sdcor = vc$sdcor[i])),
       time_s = t)
}
panel_fits <- function(f) list(formula = f, fits = list(REML = fit_panel(as.formula(f), TRUE),
                                                        ML = fit_panel(as.formula(f), FALSE)))
out <- list(
  source = paste("Rscript tests/golden/crossed_fits.R;", R.version.string, "; lme4", as.character(packageVersion("lme4"))),
  scotssec = list(formula = "attain ~ verbal + sex + (1 | primary) + (1 | second)",
                  fits = list(REML = fit_one(TRUE), ML = fit_one(FALSE))),
  panel_slopes = panel_fits("y ~ x + (x | subject) + (x || item)"),
  panel_nested = panel_fits("y ~ x + (1 | item) + (1 | group/subject)"))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "tests/golden/crossed_fits.json")
