#!/usr/bin/env Rscript
# Exact maximum-likelihood fits of a linear mixed model with Student-t level-1 errors and a
# Gaussian random intercept: tests/golden/student_t_exact.json.
#
# Model (sleepstudy): reaction_i = a0 + a1 days_i + b_subject(i) + sigma t_nu,
# b_j ~ Normal(0, tau^2), the t errors independent across rows. No R package installed here
# fits it (heavy, robustlmm and tlmec are not available; robustlmm is not ML anyway), so the
# likelihood is written out: each subject's integral over b_j of the product of its rows' t
# densities and the normal density, by R's integrate() (adaptive Gauss-Kronrod; relative
# tolerance 1e-10, 1e-7 where that fails on rounding, over b within 20 approximate
# posterior SDs of the integrand's mode, split there), and its logarithm summed over
# subjects. It is maximised by optim(method = "BFGS") over
# (a0, a1, log sigma, log tau) with nu fixed at 4, and over (a0, a1, log sigma, log tau,
# log(nu - 1)) with nu estimated, from lme4's ML fit (and nu = 10), with reltol 1e-15 and
# parameters scaled to order one, then polished by Newton steps whose gradient and Hessian
# are central differences (steps 1e-5 and 1e-4 on the scaled parameters). Standard errors:
# the inverse of the observed information (the same Hessian), by the delta method for
# sigma, tau and nu. Recorded: logLik, the estimates, their standard errors, the maximum
# absolute gradient at the end, and each row's E[lambda_i | y] (the posterior mean of its
# scale-mixture weight, (nu + 1) / (nu + r_i^2 / sigma^2) averaged over b_j | y by the same
# integration) for the fit with nu fixed.
#
# Usage, from the repository root:
#   Rscript tests/golden/student_t_exact.R [data_dir] [output_json]
# defaults: bayeshlm/datasets and tests/golden/student_t_exact.json.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) >= 1) args[[1]] else file.path("bayeshlm", "datasets")
out_file <- if (length(args) >= 2) args[[2]] else file.path("tests", "golden", "student_t_exact.json")

d <- read.csv(file.path(data_dir, "sleepstudy.csv"), colClasses = c(subject = "character"))
d$subject <- factor(d$subject, levels = unique(d$subject))
groups <- split(seq_len(nrow(d)), d$subject)
X <- cbind(1, d$days)
y <- d$reaction

log_t <- function(z, nu) dt(z, nu, log = TRUE)

group_integral <- function(r0, sigma, tau, nu, fun = NULL) {
  # log of int prod_i t_nu((r0_i - b) / sigma) / sigma * dnorm(b, 0, tau) db, and optionally
  # int fun(b) * (the same) db / (the integral)
  g <- function(b) colSums(log_t(outer(r0, b, "-") / sigma, nu)) - length(r0) * log(sigma) +
    dnorm(b, 0, tau, log = TRUE)
  width <- 1 / sqrt(length(r0) / sigma^2 + 1 / tau^2)
  centre <- optimize(g, c(min(r0, 0) - 10 * sigma, max(r0, 0) + 10 * sigma), maximum = TRUE, tol = 1e-10)$maximum
  top <- g(centre)
  f <- function(b) exp(g(b) - top)
  lo <- centre - 20 * width
  hi <- centre + 20 * width
  piece <- function(h, from, to) tryCatch(
    integrate(h, from, to, rel.tol = 1e-10, abs.tol = 0, subdivisions = 1000L)$value,
    # far from the optimum, where optim's line searches look, a looser tolerance may be needed
    error = function(e) integrate(h, from, to, rel.tol = 1e-7, abs.tol = 0, subdivisions = 1000L,
                                  stop.on.error = FALSE)$value)
  int <- function(h) piece(h, lo, centre) + piece(h, centre, hi)
  I <- int(f)
  if (is.null(fun)) return(top + log(I))
  int(function(b) fun(b) * f(b)) / I
}

loglik <- function(a, sigma, tau, nu) {
  r <- y - drop(X %*% a)
  sum(vapply(groups, function(rows) group_integral(r[rows], sigma, tau, nu), 0.0))
}

lmm <- lmer(reaction ~ days + (1 | subject), data = d, REML = FALSE)
a_start <- unname(fixef(lmm))
a_scale <- unname(sqrt(diag(as.matrix(vcov(lmm)))))
s_start <- sigma(lmm)
t_start <- as.data.frame(VarCorr(lmm))$sdcor[1]

fit <- function(nu_fixed) {
  unpack <- function(v) {
    list(a = a_start + a_scale * v[1:2], sigma = exp(v[3]), tau = exp(v[4]),
         nu = if (is.null(nu_fixed)) 1 + exp(v[5]) else nu_fixed)
  }
  f <- function(v) { p <- unpack(v); -loglik(p$a, p$sigma, p$tau, p$nu) }
  v0 <- c(0, 0, log(s_start), log(t_start), if (is.null(nu_fixed)) log(9))
  opt <- optim(v0, f, method = "BFGS", control = list(reltol = 1e-15, maxit = 1000, ndeps = rep(1e-5, length(v0))))
  v <- opt$par
  grad <- function(v, h = 1e-5) sapply(seq_along(v), function(i) {
    e <- replace(numeric(length(v)), i, h); (f(v + e) - f(v - e)) / (2 * h) })
  hess <- function(v, h = 1e-4) {
    H <- sapply(seq_along(v), function(i) {
      e <- replace(numeric(length(v)), i, h); (grad(v + e) - grad(v - e)) / (2 * h) })
    (H + t(H)) / 2
  }
  for (k in 1:4) {
    step <- -solve(hess(v), grad(v))
    if (f(v + step) <= f(v)) v <- v + step
    if (max(abs(step)) < 1e-9) break
  }
  H <- hess(v)
  cov <- solve(H)
  p <- unpack(v)
  out <- list(
    logLik = -f(v),
    fixef = list(Intercept = p$a[1], days = p$a[2]),
    fixef_se = list(Intercept = a_scale[1] * sqrt(cov[1, 1]), days = a_scale[2] * sqrt(cov[2, 2])),
    sigma = p$sigma, sigma_se = p$sigma * sqrt(cov[3, 3]),
    tau = p$tau, tau_se = p$tau * sqrt(cov[4, 4]),
    nu = p$nu, nu_se = if (is.null(nu_fixed)) (p$nu - 1) * sqrt(cov[5, 5]) else NULL,
    max_abs_gradient = max(abs(grad(v))),
    optim_convergence = opt$convergence
  )
  if (!is.null(nu_fixed)) {
    r <- y - drop(X %*% p$a)
    lam <- numeric(nrow(d))
    for (rows in groups) {
      for (i in rows) {
        lam[i] <- group_integral(r[rows], p$sigma, p$tau, p$nu,
                                 fun = function(b) (p$nu + 1) / (p$nu + ((r[i] - b) / p$sigma)^2))
      }
    }
    out$weights <- lam
  }
  out
}

t0 <- proc.time()[["elapsed"]]
result <- list(
  description = paste("Exact ML fits of reaction ~ days + (1 | subject) on sleepstudy with Student-t level-1",
                      "errors, by numerical integration of each subject's likelihood; see",
                      "tests/golden/student_t_exact.R."),
  r_version = R.version.string,
  lme4_version = as.character(packageVersion("lme4")),
  nu_fixed_4 = fit(4),
  nu_estimated = fit(NULL)
)
result$time_s <- proc.time()[["elapsed"]] - t0
writeLines(toJSON(result, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), out_file)
