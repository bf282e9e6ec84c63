"""Does the uncertainty mean something? Calibration of the probabilities and how well uncertainty finds errors.

Both are pooled over every voxel of every prompt of a split (or of one prompt group), streaming, so a split of
any size fits in memory:

* **Expected calibration error** (Guo et al. 2017): voxels binned by predicted probability (MONAI's
  ``calibration_binning``); ECE = sum over bins of (share of voxels) x |mean probability - fraction in target|.
* **Uncertainty-error AUROC**: how well the voxel uncertainty ranks the voxels the thresholded prediction gets
  wrong above those it gets right (0.5 = no better than chance, 1 = every error more uncertain than every correct
  voxel). Histograms of the uncertainty of wrong and right voxels (1000 bins) are scored with scikit-learn's
  ``roc_auc_score``, the bin counts as sample weights.

Caveat, stated with the figures: most voxels of an image are background far from any target, confidently right,
so the pooled AUROC rewards a model that is certain there. The per-group rows show it where targets are small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from monai.metrics.calibration import calibration_binning
from sklearn.metrics import roc_auc_score

from medtextseg.utils.atomic import atomic_path
from medtextseg.utils.errors import MedTextSegError


class UncertaintyAccumulator:
    """Pools (probability, target, uncertainty) voxels; reports ECE, the uncertainty-error AUROC, counts.

    Args:
        threshold: a voxel is predicted in the target when its probability is above it.
        calibration_bins: equal-width probability bins of the ECE.
        uncertainty_bins: equal-width bins of the uncertainty histograms (on [0, 1]).
    """

    def __init__(self, threshold: float = 0.5, calibration_bins: int = 15, uncertainty_bins: int = 1000) -> None:
        self.threshold = threshold
        self.probability_sum = np.zeros(calibration_bins)
        self.target_sum = np.zeros(calibration_bins)
        self.counts = np.zeros(calibration_bins)
        self.wrong = np.zeros(uncertainty_bins)
        self.right = np.zeros(uncertainty_bins)

    def add(self, probability: np.ndarray, target: np.ndarray, uncertainty: np.ndarray) -> None:
        """probability, uncertainty: [*spatial] in [0, 1]; target: [*spatial] bool, same shape.

        Raises:
            MedTextSegError: shapes differ or a value is outside [0, 1] or not finite.
        """
        if not probability.shape == target.shape == uncertainty.shape:
            raise MedTextSegError(f"uncertainty evaluation: probability {probability.shape}, target {target.shape} "
                                  f"and uncertainty {uncertainty.shape} must have one shape")
        for name, values in (("probability", probability), ("uncertainty", uncertainty)):
            if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
                raise MedTextSegError(f"uncertainty evaluation: the {name} map must be finite and in [0, 1]")
        as_tensor = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).reshape(1, 1, -1)
                     for a in (probability, target)]
        mean_p, mean_gt, counts = (t[0, 0].double().numpy() for t in calibration_binning(
            *as_tensor, num_bins=len(self.counts)))
        filled = counts > 0
        self.probability_sum[filled] += mean_p[filled] * counts[filled]
        self.target_sum[filled] += mean_gt[filled] * counts[filled]
        self.counts += counts
        wrong = (probability > self.threshold) != target.astype(bool)
        edges = np.linspace(0.0, 1.0, len(self.wrong) + 1)
        self.wrong += np.histogram(uncertainty[wrong], edges)[0]
        self.right += np.histogram(uncertainty[~wrong], edges)[0]

    @property
    def voxels(self) -> int:
        return int(self.counts.sum())

    def expected_calibration_error(self) -> float | None:
        """ECE over the pooled voxels, None before any voxel."""
        if not self.voxels:
            return None
        filled = self.counts > 0
        gap = np.abs(self.probability_sum[filled] - self.target_sum[filled]) / self.counts[filled]
        return float((self.counts[filled] / self.voxels * gap).sum())

    def error_auroc(self) -> float | None:
        """AUROC of the uncertainty for "this voxel is wrong"; None when every voxel is right or every one wrong."""
        if not self.wrong.sum() or not self.right.sum():
            return None
        centres = (np.arange(len(self.wrong)) + 0.5) / len(self.wrong)
        score = np.concatenate([centres, centres])
        truth = np.concatenate([np.ones_like(centres), np.zeros_like(centres)])
        weight = np.concatenate([self.wrong, self.right])
        keep = weight > 0
        return float(roc_auc_score(truth[keep], score[keep], sample_weight=weight[keep]))

    def reliability(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per filled calibration bin: (mean probability, fraction in target, voxel count)."""
        filled = self.counts > 0
        return (self.probability_sum[filled] / self.counts[filled], self.target_sum[filled] / self.counts[filled],
                self.counts[filled])

    def summary(self) -> dict[str, float | int | None]:
        return {"ece": self.expected_calibration_error(), "uncertainty_error_auroc": self.error_auroc(),
                "voxels": self.voxels, "error_voxels": int(self.wrong.sum())}


def save_reliability_diagram(accumulator: UncertaintyAccumulator, out_path: str | Path, title: str) -> Path:
    """PNG: fraction in target vs mean predicted probability per bin (the diagonal is perfect calibration), and
    the uncertainty histograms of right and wrong voxels."""
    figure = Figure(figsize=(10, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    calibration = figure.add_subplot(1, 2, 1)
    mean_p, fraction, counts = accumulator.reliability()
    calibration.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    calibration.plot(mean_p, fraction, marker="o", label=f"ECE {accumulator.expected_calibration_error() or 0:.4f}")
    calibration.set_xlabel("mean predicted probability")
    calibration.set_ylabel("fraction of voxels in the target")
    calibration.legend(loc="upper left")
    histogram = figure.add_subplot(1, 2, 2)
    centres = (np.arange(len(accumulator.wrong)) + 0.5) / len(accumulator.wrong)
    for counts_, label, color in ((accumulator.right, "right voxels", "tab:green"),
                                  (accumulator.wrong, "wrong voxels", "tab:red")):
        total = counts_.sum()
        if total:
            histogram.plot(centres, np.cumsum(counts_) / total, label=label, color=color)
    auroc = accumulator.error_auroc()
    histogram.set_title(f"uncertainty-error AUROC {auroc:.3f}" if auroc is not None else "no errors to rank")
    histogram.set_xlabel("voxel uncertainty")
    histogram.set_ylabel("cumulative share of voxels")
    histogram.legend(loc="lower right")
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return out_path
