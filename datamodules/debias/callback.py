"""`DebiasCallback`: the only writer of the debiasing state that outlives a training step.

After each training batch, the LfF statistics held by the datamodule take the batch's
per-(image, class) losses that the module computed (and previewed for its weights), then merge
the updates of all DDP ranks. A no-op without data.debias.lff.
"""
from __future__ import annotations

import pytorch_lightning as pl


class DebiasCallback(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pipeline = getattr(trainer.datamodule, "debias", None)
        pending = getattr(pl_module, "lff_batch", None)
        if pipeline is not None and pipeline.lff is not None:
            # a skipped (non-finite) iteration must not poison the EMAs
            if pending is not None and all(bool(t.isfinite().all()) for t in pending[1:3]):
                pipeline.lff.update_segmentation(*pending)
            pl_module.lff_batch = None
            pipeline.lff.all_reduce_()  # every rank, every iteration (a collective)
