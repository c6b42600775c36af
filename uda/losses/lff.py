"""Learning from Failure (LfF, Nam et al., NeurIPS 2020): GCE loss and relative-difficulty weights.

LfF trains two networks at once: a *biased* one with the generalized cross-entropy (GCE), which
emphasises easy samples and so latches onto the shortcut, and a *debiased* one with the CE
re-weighted per sample by W = CE_b / (CE_b + CE_d): samples the biased model fails on
("bias-conflicting") get weights near 1, the ones it finds easy near 0. The CE values are
per-sample exponential moving averages (EMA, alpha 0.7 in the paper), each normalised by the
maximum EMA over the samples of its class.

`LfFWeights` keeps those EMAs in one (num_samples, num_classes) table per model:
- classification: entry (i, y_i) holds sample i's EMA (other entries of row i stay 0);
- segmentation: entry (i, c) holds the EMA of the mean CE over image i's pixels of class c,
  and every pixel of class c in image i gets the weight of (i, c).
The per-class maximum is the maximum of the table's column (never-updated entries are 0 and
losses are >= 0, so it is the maximum over the updated entries, as in LfF). Memory:
2 float32 + 2 bool tables of N x C.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE_INDEX = 255


def gce_loss(logits: torch.Tensor, target: torch.Tensor, q: float = 0.7,
             ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Generalized cross-entropy (Zhang & Sabuncu 2018), per element: (1 - p_y ** q) / q.

    logits (B,C) or (B,C,H,W); target (B,) or (B,H,W) int64. Returns float32 (B,) or (B,H,W),
    0 where target == ignore_index. q in (0, 1]: q -> 0 gives CE (-log p_y), q = 1 gives
    1 - p_y (MAE). Its gradient is p_y ** q times the CE gradient (LfF's code implements the
    same gradient as CE * p_y ** q * q, i.e. q times this one).
    """
    if not q > 0:
        raise ValueError(f"q must be > 0, got {q}")
    logp = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    logp_y = logp.gather(1, t.unsqueeze(1)).squeeze(1)
    loss = -torch.expm1(q * logp_y) / q  # (1 - exp(q log p)) / q, accurate for small q
    return loss * valid


class LfFWeights:
    """Per-sample (or per-image-per-class) loss EMAs of the biased (b) and debiased (d) models.

    update / weights: classification (indices (B,) into the dataset, labels (B,)).
    update_segmentation / pixel_weights: segmentation (masks (B,H,W), ignore_index skipped).
    Indices are dataset indices in [0, num_samples); within one call each (index, class) pair
    must appear once. EMA update as in LfF: the first value is taken as is, then
    ema <- ema_coef * ema + (1 - ema_coef) * loss.
    """

    def __init__(self, num_samples: int, num_classes: int, ema: float = 0.7, eps: float = 1e-8,
                 device: Optional[torch.device] = None):
        if not 0 <= ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.num_samples, self.num_classes, self.ema, self.eps = num_samples, num_classes, ema, eps
        shape = (num_samples, num_classes)
        self.ema_b = torch.zeros(shape, device=device)
        self.ema_d = torch.zeros(shape, device=device)
        self.updated = torch.zeros(shape, dtype=torch.bool, device=device)
        self.dirty = torch.zeros(shape, dtype=torch.bool, device=device)  # changed since sync

    def to(self, device) -> "LfFWeights":
        for k in ("ema_b", "ema_d", "updated", "dirty"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    # ------------------------------------------------------------------ core
    def _new_values(self, rows: torch.Tensor, cols: torch.Tensor, loss_b: torch.Tensor,
                    loss_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The values entries (rows, cols) of ema_b and ema_d would hold after this update (the
        tables are not changed)."""
        if torch.unique(rows * self.num_classes + cols).numel() != rows.numel():
            raise ValueError("an (index, class) pair appears twice in one update")
        keep = 1 - self.ema * self.updated[rows, cols].float()
        return tuple(self.ema * table[rows, cols] + keep * loss.detach().to(table)
                     for table, loss in ((self.ema_b, loss_b), (self.ema_d, loss_d)))

    def _update_entries(self, rows: torch.Tensor, cols: torch.Tensor, loss_b: torch.Tensor,
                        loss_d: torch.Tensor) -> None:
        rows, cols = rows.to(self.ema_b.device).long(), cols.to(self.ema_b.device).long()
        self.ema_b[rows, cols], self.ema_d[rows, cols] = self._new_values(rows, cols, loss_b,
                                                                          loss_d)
        self.updated[rows, cols] = True
        self.dirty[rows, cols] = True

    def class_max(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class maxima of the EMAs over all samples, (C,) each (0 for unseen classes)."""
        return self.ema_b.max(dim=0).values, self.ema_d.max(dim=0).values

    def _weight(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        tiny = torch.finfo(self.ema_b.dtype).tiny
        max_b, max_d = (m.clamp_min(tiny) for m in self.class_max())
        nb = self.ema_b[rows, cols] / max_b[cols]
        nd = self.ema_d[rows, cols] / max_d[cols]
        return nb / (nb + nd + self.eps)

    # ------------------------------------------------------------------ classification
    def update(self, indices: torch.Tensor, loss_b: torch.Tensor, loss_d: torch.Tensor,
               labels: torch.Tensor) -> None:
        """indices, labels (B,) int64; loss_b, loss_d (B,) per-sample CE of each model."""
        dev = self.ema_b.device
        self._update_entries(indices.to(dev), labels.to(dev), loss_b.flatten(), loss_d.flatten())

    def weights(self, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """W (B,) float32 in [0, 1): (e_b / max_b[y]) / (e_b / max_b[y] + e_d / max_d[y] + eps)."""
        dev = indices.device
        w = self._weight(indices.to(self.ema_b.device).long(), labels.to(self.ema_b.device).long())
        return w.to(dev)

    # ------------------------------------------------------------------ segmentation
    def update_segmentation(self, indices: torch.Tensor, ce_b_map: torch.Tensor,
                            ce_d_map: torch.Tensor, masks: torch.Tensor,
                            ignore_index: int = IGNORE_INDEX) -> None:
        """indices (B,); ce_b_map, ce_d_map (B,H,W) per-pixel CE; masks (B,H,W) int64.

        For each image i and each class c present in masks[i], the mean CE over the pixels of
        class c updates entry (indices[i], c).
        """
        self._update_entries(*self._class_means(indices, ce_b_map, ce_d_map, masks,
                                                ignore_index))

    def _class_means(self, indices, ce_b_map, ce_d_map, masks, ignore_index=IGNORE_INDEX):
        """(rows, cols, mean CE_b, mean CE_d): one entry per (image, class present)."""
        dev = self.ema_b.device
        masks, c = masks.to(dev), self.num_classes
        valid = masks != ignore_index
        img = torch.arange(masks.shape[0], device=dev).view(-1, 1, 1).expand_as(masks)
        key = (img * c + masks)[valid]
        ones = torch.ones_like(key, dtype=torch.float)
        count = torch.zeros(masks.shape[0] * c, device=dev).index_add_(0, key, ones)
        seen = count > 0
        means = []
        for ce in (ce_b_map, ce_d_map):
            s = torch.zeros_like(count).index_add_(0, key, ce.detach().to(dev).float()[valid])
            means.append(s[seen] / count[seen])
        flat = seen.nonzero().squeeze(1)
        return indices.to(dev).long()[flat // c], flat % c, means[0], means[1]

    def pixel_weights(self, indices: torch.Tensor, masks: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """(B,H,W) float32: each pixel gets the weight W of (its image, its class); ignore -> 0."""
        dev = self.ema_b.device
        rows = indices.to(dev).long()
        c = torch.arange(self.num_classes, device=dev)
        table = self._weight(rows.view(-1, 1).expand(-1, self.num_classes),
                             c.expand(rows.numel(), -1))
        m = masks.to(dev)
        valid = m != ignore_index
        w = table.gather(1, torch.where(valid, m, torch.zeros_like(m)).flatten(1)).view_as(m)
        return (w * valid).to(masks.device)

    def preview_pixel_weights(self, indices: torch.Tensor, ce_b_map: torch.Tensor,
                              ce_d_map: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """`pixel_weights` with this batch's losses folded into the EMAs first (as LfF does
        before weighting), the stored statistics unchanged: the batch's entries are written,
        the weights (and class maxima) read, and the old entries put back (no copy of the
        N x C tables)."""
        rows, cols, mean_b, mean_d = self._class_means(indices, ce_b_map, ce_d_map, masks)
        saved = self.ema_b[rows, cols], self.ema_d[rows, cols]
        self.ema_b[rows, cols], self.ema_d[rows, cols] = self._new_values(rows, cols, mean_b,
                                                                          mean_d)
        try:
            return self.pixel_weights(indices, masks)
        finally:
            self.ema_b[rows, cols], self.ema_d[rows, cols] = saved

    # ------------------------------------------------------------------ checkpoints / DDP
    def state_dict(self) -> dict:
        return {"ema_b": self.ema_b.clone(), "ema_d": self.ema_d.clone(),
                "updated": self.updated.clone(), "dirty": self.dirty.clone(), "ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["ema_b"].shape) != tuple(self.ema_b.shape):
            raise ValueError(f"LfF statistics of shape {tuple(state['ema_b'].shape)} do not fit "
                             f"({self.num_samples}, {self.num_classes})")
        dev = self.ema_b.device
        self.ema = float(state["ema"])
        for k in ("ema_b", "ema_d", "updated", "dirty"):
            setattr(self, k, state[k].to(dev).clone())

    def all_reduce_(self, group=None) -> None:
        """Merge the entries every rank changed since the last call (a no-op without DDP).

        Each rank updates the rows of its own samples (DDP shards the dataset), so the changed
        entries of different ranks are disjoint: summing, over ranks, each rank's changed values
        (0 elsewhere) and its change indicator gives every rank the union of the updates,
        exactly. An entry two ranks changed gets the mean of their values. One dense all-reduce
        of 4 x N x C floats; the tables must be on a device the backend supports. Between two
        calls, a rank's weights use the other ranks' older entries (and class maxima).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        d = self.dirty.float()
        payload = torch.stack([self.ema_b * d, self.ema_d * d, self.updated.float() * d, d])
        dist.all_reduce(payload, op=dist.ReduceOp.SUM, group=group)
        n = payload[3]
        changed = n > 0
        safe = n.clamp_min(1)
        self.ema_b = torch.where(changed, payload[0] / safe, self.ema_b)
        self.ema_d = torch.where(changed, payload[1] / safe, self.ema_d)
        self.updated = torch.where(changed, payload[2] > 0, self.updated)
        self.dirty.zero_()
