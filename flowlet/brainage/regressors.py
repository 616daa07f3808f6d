"""Classical brain-age regressors: PCA followed by ridge, SVR or Gaussian-process regression, tuned by cross-validation.

Every classical regressor is a scikit-learn ``GridSearchCV`` around a ``Pipeline``
(PCA -> model) wrapped in ``LinearKernelRegressor``. The wrapper standardises the
features (statistics of the training set it is fitted on) and hands the pipeline the
subjects x subjects linear kernel (Gram) matrix; PCA is scikit-learn's ``KernelPCA``
on that precomputed kernel, which gives the same component scores as PCA of the
standardised features. Cross-validation then slices the small kernel matrix instead
of refitting a PCA of the subjects x voxels matrix for every candidate, which makes
the search about a hundred times cheaper when, as here, there are far fewer subjects
than voxels. (The standardisation is fitted once on the whole training set rather
than per fold; it uses no ages, so it leaks nothing about the targets.)

The grid always includes the number of PCA components; ridge also searches its
penalty, SVR its kernel and C (on the PCA scores divided by one overall scale), and the Gaussian process its kernel family (the
kernel's own hyper-parameters are then fitted by maximising the marginal likelihood,
as usual for GPs). Targets are standardised for SVR and GPR so that their
regularisation grids do not depend on the age range. The predict-the-training-mean
baseline (``mean_baseline``) is a plain ``DummyRegressor``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn import config_context
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.decomposition import KernelPCA
from sklearn.dummy import DummyRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, WhiteKernel
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from flowlet.errors import FlowletError

CLASSICAL_REGRESSORS = ("ridge", "svr", "gpr")
BASELINE = "mean_baseline"
DEFAULT_PCA_COMPONENTS = (10, 25, 50)
# Floor of a feature's standardising spread, as a fraction of the median feature's (real regional features: >= 0.05).
MIN_RELATIVE_SPREAD = 0.01


def _standardised_target(model) -> TransformedTargetRegressor:
    return TransformedTargetRegressor(regressor=model, transformer=StandardScaler())


def _model_and_grid(name: str, seed: int) -> tuple[object, dict[str, list]]:
    if name == "ridge":
        return Ridge(), {"model__alpha": list(np.logspace(-1, 7, 9))}
    if name == "svr":
        return Pipeline([("scale", OverallScale()), ("svr", _standardised_target(SVR()))]), {
            "model__svr__regressor__kernel": ["linear", "rbf"],
            "model__svr__regressor__C": [0.01, 0.1, 1.0, 10.0, 100.0],
        }
    if name == "gpr":
        linear = ConstantKernel(1.0, (1e-3, 1e3)) * DotProduct(sigma_0=1.0, sigma_0_bounds=(1e-3, 1e3)) + WhiteKernel(
            1.0, (1e-3, 1e2)
        )
        smooth = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(10.0, (1e-2, 1e4)) + WhiteKernel(1.0, (1e-3, 1e2))
        gp = GaussianProcessRegressor(kernel=linear, normalize_y=False, n_restarts_optimizer=1, random_state=seed)
        return _standardised_target(gp), {"model__regressor__kernel": [linear, smooth]}
    raise FlowletError(f"unknown classical regressor {name!r}; choose from {', '.join(CLASSICAL_REGRESSORS)}")


class OverallScale(TransformerMixin, BaseEstimator):
    """Divide by one number, the root-mean-square of the training values.

    PCA scores of standardised voxels are in the hundreds (their variances sum to the number of voxels); a linear
    SVR on them takes libsvm minutes to converge and its C grid means something different for every feature
    count. One overall scale keeps the components' relative sizes (unlike per-component standardisation,
    which would inflate the noise components).
    """

    def fit(self, values: np.ndarray, targets=None) -> OverallScale:
        self.scale_ = float(np.sqrt(np.mean(np.square(values)))) or 1.0
        return self

    def transform(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values) / self.scale_


def feasible_components(requested: Sequence[int], n_train: int, cv_folds: int, n_features: int) -> list[int]:
    """The requested PCA sizes that fit in every cross-validation fold (at most fold size and feature count)."""
    smallest_fold = n_train - int(np.ceil(n_train / cv_folds))
    limit = max(1, min(smallest_fold, n_features))
    sizes = sorted({min(int(size), limit) for size in requested if int(size) >= 1})
    if not sizes:
        raise FlowletError(f"--pca-components must list positive integers, got {list(requested)}")
    return sizes


def cv_splits(
    n_rows: int, cv_folds: int, seed: int, groups: Sequence[str] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds (train, held-out indices) of ``n_rows`` training rows: shuffled KFold, or, where
    ``groups`` (each row's subject) repeats one, folds of whole subjects, so no subject's scans are on both
    sides of a fold."""
    rows = np.zeros(n_rows)
    if groups is None or len(set(groups)) == n_rows:
        return list(KFold(cv_folds, shuffle=True, random_state=seed).split(rows))
    return list(GroupKFold(cv_folds, shuffle=True, random_state=seed).split(rows, groups=groups))


def make_search(
    name: str,
    n_train: int,
    n_features: int,
    pca_components: Sequence[int] = DEFAULT_PCA_COMPONENTS,
    cv_folds: int = 5,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> LinearKernelRegressor | DummyRegressor:
    """An unfitted regressor: the mean baseline, or a cross-validated grid search over a PCA pipeline."""
    if name == BASELINE:
        return DummyRegressor(strategy="mean")
    if cv_folds < 2:
        raise FlowletError(f"--cv-folds must be at least 2, got {cv_folds}")
    if n_train < 2 * cv_folds:
        raise FlowletError(
            f"{name}: {n_train} training subjects are too few for {cv_folds}-fold cross-validation "
            f"(need at least {2 * cv_folds}); lower --cv-folds or add subjects"
        )
    model, grid = _model_and_grid(name, seed)
    pipeline = Pipeline([("pca", KernelPCA(kernel="precomputed", eigen_solver="dense")), ("model", model)])
    grid = {"pca__n_components": feasible_components(pca_components, n_train, cv_folds, n_features), **grid}
    search = GridSearchCV(
        pipeline,
        grid,
        cv=cv_splits(n_train, cv_folds, seed, groups),
        scoring="neg_mean_absolute_error",
        n_jobs=1,
        error_score="raise",
    )
    return LinearKernelRegressor(search)


class LinearKernelRegressor(RegressorMixin, BaseEstimator):
    """Standardise features, then fit ``estimator`` on the linear kernel between subjects (see the module docstring)."""

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, features: np.ndarray, ages: np.ndarray) -> LinearKernelRegressor:
        if not (np.isfinite(features).all() and np.isfinite(ages).all()):
            raise FlowletError("brain-age features or ages are not all finite; cannot fit a regressor")
        self.scaler_ = StandardScaler().fit(features)
        # A feature that barely varies in this training set (a tissue density where every synthetic brain agrees)
        # would be divided by ~0 and turn a new image's ordinary value into thousands of standard deviations.
        self.scaler_.scale_ = np.maximum(self.scaler_.scale_, MIN_RELATIVE_SPREAD * np.median(self.scaler_.scale_))
        self.train_features_ = self.scaler_.transform(features).astype(np.float32)
        # The inputs are checked once, above: the grid search's thousands of small fits would each check the
        # arrays and their own parameters again, which on a few dozen subjects took most of their time. What
        # those checks would have caught inside a fold (a model's non-finite output) shows in its scores.
        with config_context(assume_finite=True, skip_parameter_validation=True):
            self.estimator_ = clone(self.estimator).fit(self._kernel(self.train_features_), ages)
        if (
            isinstance(self.estimator_, GridSearchCV)
            and not np.isfinite(self.estimator_.cv_results_["mean_test_score"]).all()
        ):
            raise FlowletError("a brain-age regressor gave non-finite predictions in cross-validation")
        return self

    def _kernel(self, standardised: np.ndarray) -> np.ndarray:
        return np.asarray(standardised, dtype=np.float64) @ np.asarray(self.train_features_, dtype=np.float64).T

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.estimator_.predict(self._kernel(self.scaler_.transform(features)))

    @property
    def search(self) -> GridSearchCV | None:
        return self.estimator_ if isinstance(self.estimator_, GridSearchCV) else None


def fit_quietly(estimator, features: np.ndarray, ages: np.ndarray):
    """Fit, silencing the optimiser's convergence chatter (GP bounds, SVR iterations): the CV score judges the fit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(features, ages)


def best_unfitted(estimator):
    """A fresh copy of the chosen model (the grid search's best pipeline), for refitting on cross-validation folds."""
    if isinstance(estimator, LinearKernelRegressor) and estimator.search is not None:
        return LinearKernelRegressor(clone(estimator.search.best_estimator_))
    return clone(estimator)


def cross_validated_mae(estimator) -> float | None:
    """The grid search's best mean cross-validated MAE, when the estimator ran one."""
    if isinstance(estimator, LinearKernelRegressor) and estimator.search is not None:
        return -float(estimator.search.best_score_)
    return None


def describe_choice(estimator) -> str:
    if isinstance(estimator, LinearKernelRegressor) and estimator.search is not None:
        return ", ".join(f"{key.split('__')[-1]}={value}" for key, value in estimator.search.best_params_.items())
    return "training mean"
