"""Offline evaluation of saved predictions (exact Cityscapes protocol).

CLI: `python -m uda.evaluation.pred_dir PRED_DIR CITYSCAPES_ROOT [--fmt trainIds] [--json out.json]`
"""
__all__ = ["evaluate_pred_dir", "results_table"]


def __getattr__(name):  # lazy, so `python -m uda.evaluation.pred_dir` imports the module only once
    if name in __all__:
        from uda.evaluation import pred_dir
        return getattr(pred_dir, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
