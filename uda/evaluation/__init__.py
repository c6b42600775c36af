"""Evaluation: the protocol (`inference`), prediction files (`export`), and the commands
`uda evaluate` (`evaluate_checkpoint`), `uda predict` (`predict_files`) and `uda evaluate-dir`
(`pred_dir`: offline evaluation of saved predictions, exact Cityscapes protocol)."""
from uda.evaluation.pred_dir import evaluate_pred_dir

__all__ = ["evaluate_pred_dir"]
