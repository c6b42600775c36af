"""Style distance between image sets, as pure tensor functions.

Per-image style descriptor (`style_descriptor`): colour statistics, then texture statistics.
  colour  (COLOUR_DIMS = 9): per-channel mean and std of RGB in [0, 1], and the std of the three
          channels of an orthonormal opponent colour space (O1 = (R-G)/sqrt2, O2 = (R+G-2B)/sqrt6,
          O3 = (R+G+B)/sqrt3): RGB stds alone miss how the channels co-vary (saturation).
  texture (2 * sum of channels): per-channel mean and std of each feature map of a FIXED network
          (passed in, e.g. `PerceptualNet(kind="lite")` relu1_1..relu3_1; never one being trained).
Set distance (`frechet_distance`): the Fréchet distance between Gaussians fitted to two sets of
descriptors, ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64, with the matrix square
root taken through eigendecompositions of symmetric matrices; a small ridge keeps covariances
estimated from fewer images than dimensions well conditioned. Like FID it is biased upwards for
small sets (two samples of one distribution are not at distance 0): compare distances computed
with the same set sizes. `gap_closed(d_tt, d_st) = 1 - d_tt / d_st`: the fraction of the
source-to-target distance that translation closes (1: translated and target indistinguishable,
0: no change, negative: further from the target than the untranslated source).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

COLOUR_DIMS = 9
_SQ2, _SQ3, _SQ6 = math.sqrt(2.0), math.sqrt(3.0), math.sqrt(6.0)
# rows: O1, O2, O3 (an orthonormal basis of RGB space)
_OPPONENT = torch.tensor([[1 / _SQ2, -1 / _SQ2, 0.0],
                          [1 / _SQ6, 1 / _SQ6, -2 / _SQ6],
                          [1 / _SQ3, 1 / _SQ3, 1 / _SQ3]])


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> per-image, per-channel mean and (population) std, each (B, C)."""
    flat = x.flatten(2).float()
    return flat.mean(-1), flat.std(-1, unbiased=False)


def colour_descriptor(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 9): RGB means, RGB stds, opponent-space stds."""
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB images, got {tuple(rgb.shape)}")
    mean, std = _mean_std(rgb)
    opp = torch.einsum("oc,bchw->bohw", _OPPONENT.to(rgb.device, torch.float32), rgb.float())
    return torch.cat([mean, std, _mean_std(opp)[1]], dim=1)


def feature_descriptor(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """[(B, C_i, h_i, w_i), ...] -> (B, 2 * sum C_i): per map, channel means then channel stds."""
    parts = []
    for f in features:
        mean, std = _mean_std(f)
        parts += [mean, std]
    return torch.cat(parts, dim=1)


def style_descriptor(u: torch.Tensor, net: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
                     layers: Sequence[str] | None = None) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> (B, COLOUR_DIMS + texture dims) descriptors.

    `net(u)` returns {layer: feature map} (e.g. a `PerceptualNet`); `layers` picks and orders
    them (default: all returned, sorted by name). Run it under torch.no_grad()."""
    feats = net(u)
    names = list(layers) if layers is not None else sorted(feats)
    return torch.cat([colour_descriptor(((u + 1.0) / 2.0).clamp(0, 1)),
                      feature_descriptor([feats[n] for n in names])], dim=1)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues from
    rounding are clamped to 0)."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def gaussian_frechet(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor,
                     cov2: torch.Tensor) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2, cov1, cov2 = (t.detach().to("cpu", torch.float64) for t in (mu1, mu2, cov1, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.numel(),) * 2:
        raise ValueError(f"shape mismatch: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"cov {tuple(cov1.shape)}/{tuple(cov2.shape)}")
    # Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), the inner matrix symmetric PSD
    r1 = _sqrtm_psd(cov1)
    inner = torch.linalg.eigvalsh(((r1 @ cov2 @ r1) + (r1 @ cov2 @ r1).T) / 2)
    tr_sqrt = inner.clamp(min=0).sqrt().sum()
    d = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2.0 * tr_sqrt
    return max(float(d), 0.0)


def _fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected (N, D) descriptors with N >= 1, got {tuple(x.shape)}")
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / max(x.shape[0] - 1, 1)
    return mu, cov


def frechet_distance(a: torch.Tensor, b: torch.Tensor, ridge: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to descriptor sets a (N1, D) and b (N2, D)
    (unbiased covariances). `ridge`, relative to the mean per-dimension variance of both sets,
    is added to both covariances (their traces grow by the same amount, so identical sets stay
    at 0): with N < D the sample covariances are singular."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"descriptor sets must be (N, D) with equal D, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    (mu1, c1), (mu2, c2) = _fit(a), _fit(b)
    dims = c1.shape[0]
    scale = float(c1.trace() + c2.trace()) / (2 * dims)
    eps = ridge * (scale if scale > 0 else 1.0)
    eye = torch.eye(dims, dtype=torch.float64)
    return gaussian_frechet(mu1, c1 + eps * eye, mu2, c2 + eps * eye)


def gap_closed(d_translated_target: float, d_source_target: float) -> float:
    """1 - d_tt / d_st; NaN when the source is already at distance 0 from the target."""
    if not d_source_target > 0:
        return float("nan")
    return 1.0 - float(d_translated_target) / float(d_source_target)


def style_distances(source: torch.Tensor, translated: torch.Tensor, target: torch.Tensor,
                    colour_dims: int = COLOUR_DIMS) -> dict[str, float]:
    """Fréchet distances source->target and translated->target and the gap closed, for the whole
    descriptor ("style_*") and for its colour and texture parts ("colour_*", "texture_*").
    Descriptors (N, D) as from `style_descriptor`; the first `colour_dims` are colour."""
    parts = {"style": slice(None), "colour": slice(0, colour_dims),
             "texture": slice(colour_dims, None)}
    out: dict[str, float] = {}
    for name, cols in parts.items():
        if source[:, cols].shape[1] == 0:
            continue
        d_st = frechet_distance(source[:, cols], target[:, cols])
        d_tt = frechet_distance(translated[:, cols], target[:, cols])
        out.update({f"{name}_fd_source_target": d_st, f"{name}_fd_translated_target": d_tt,
                    f"{name}_gap_closed": gap_closed(d_tt, d_st)})
    return out
