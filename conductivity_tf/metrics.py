"""Regression metrics, the Bruggeman baseline and the calibration of stated uncertainties: plain numpy and
scipy, shared by training (the run's metrics.json), evaluation and the notebooks."""

import numpy as np


def regression_metrics(truth, predicted):
    """R2, MAE, RMSE over all (sample, axis) values and MAPE over the percolating ones (truth > 0)."""
    truth, predicted = np.asarray(truth, float).ravel(), np.asarray(predicted, float).ravel()
    residual = predicted - truth
    ss_res = float((residual ** 2).sum())
    ss_tot = float(((truth - truth.mean()) ** 2).sum()) or 1.0
    live = truth > 1e-6
    return {"r2": 1.0 - ss_res / ss_tot, "mae": float(np.abs(residual).mean()),
            "rmse": float(np.sqrt((residual ** 2).mean())),
            "mape_percolating": float(np.abs(residual[live] / truth[live]).mean() * 100.0) if live.any() else None,
            "count": int(truth.size)}


def per_family(truth, predicted, families):
    """``regression_metrics`` of each family's samples: {family: metrics}, families sorted."""
    families = np.asarray(families)
    return {f: regression_metrics(truth[families == f], predicted[families == f])
            for f in sorted(set(families.tolist()))}


Z90 = 1.6448536  # the ~90 % interval is the prediction +- Z90 uncertainties


def uncertainty_scale(truth, predicted, spread):
    """The factor that turns an ensemble's spread into a standard deviation whose +-Z90 interval holds 90 % of
    these values (fitted on the validation split)."""
    ratio = np.abs(np.asarray(predicted, float) - truth) / np.maximum(np.asarray(spread, float), 1e-6)
    return float(np.quantile(ratio.ravel(), 0.9) / Z90)


def calibration_metrics(truth, predicted, uncertainty):
    """How far to trust the stated uncertainty: the fraction of values inside the +-Z90 (~90 %) interval and the
    Spearman correlation of |error| with the uncertainty."""
    import scipy.stats  # here: a command that only predicts starts without it (0.35 s)

    truth, predicted, uncertainty = (np.asarray(a, float).ravel() for a in (truth, predicted, uncertainty))
    error = np.abs(predicted - truth)
    return {"coverage_90": float(np.mean(error <= Z90 * uncertainty)),
            "spearman_error_uncertainty": float(scipy.stats.spearmanr(error, uncertainty)[0]) if np.ptp(
                uncertainty) > 0 and np.ptp(error) > 0 else None,  # undefined for a constant
            "mean_uncertainty": float(uncertainty.mean())}


def bruggeman_fit(porosity, sigma):
    """The exponent n of sigma = eps^n that best fits (least squares) the given samples."""
    import scipy.optimize

    porosity = np.repeat(np.asarray(porosity, float)[:, None], np.asarray(sigma).shape[1], axis=1)

    def loss(n):
        return float(((porosity ** n - sigma) ** 2).mean())

    return float(scipy.optimize.minimize_scalar(loss, bounds=(1.0, 5.0), method="bounded").x)
