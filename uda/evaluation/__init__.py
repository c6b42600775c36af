"""Offline evaluation of saved predictions (exact Cityscapes protocol); CLI: `uda evaluate-dir`."""
from uda.evaluation.pred_dir import evaluate_pred_dir

__all__ = ["evaluate_pred_dir"]
