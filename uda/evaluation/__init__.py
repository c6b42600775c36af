"""Offline evaluation of saved predictions (exact Cityscapes protocol)."""
from uda.evaluation.pred_dir import evaluate_pred_dir, results_table

__all__ = ["evaluate_pred_dir", "results_table"]
