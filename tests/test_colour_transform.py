"""DRANet's global colour transform (method.dranet.colour_transform): a translation is a global
affine colour map of the source image (the domain map fitted to the running mean layouts, then a
per-image refinement from the style codes), plus the generator's residual."""
import numpy as np
import pytest
import torch

from datamodules.toy import _grade_matrix
from uda.losses.translation import layout_colour_loss
from uda.models.dranet import DRANetTranslator
from uda.models.translation import ColourTransform, fit_colour_map

ST, TS = ("source", "target"), ("target", "source")
N_AXIS = np.ones(3) / np.sqrt(3)
K_AXIS = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3)


def hue_angle(m: np.ndarray) -> float:
    """The rotation angle about the grey axis that a 3x3 colour matrix carries (degrees)."""
    return float(np.rad2deg(np.arctan2((m * K_AXIS).sum(),
                                       (m * (np.eye(3) - np.outer(N_AXIS, N_AXIS))).sum())))


def scenes(n=6, seed=0):
    """Frames in [-1, 1] with a shared layout in distribution: a coloured band per row group
    (sky, buildings, road) with per-image jitter, so the mean thumbnail varies by position."""
    g = torch.Generator().manual_seed(seed)
    bands = torch.tensor([[-.4, .1, .8], [.6, -.2, -.5], [-.1, -.1, -.2], [.2, .7, -.3]])
    x = torch.empty(n, 3, 32, 64)
    for i in range(4):
        x[:, :, 8 * i:8 * i + 8] = bands[i].view(1, 3, 1, 1)
    x[..., 40:] = x[..., 40:].flip(1)  # left/right differ too
    return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def test_fit_recovers_a_toy_grading_from_mean_layouts():
    grade = 1.1 * _grade_matrix(np.deg2rad(-154.0), 0.8, np.array([1.1, 1.0, 0.9]))
    m_true = torch.tensor(grade, dtype=torch.float32)
    b_true = torch.tensor([.05, -.1, .02])
    src = scenes()
    tgt = torch.einsum("ij,bjhw->bihw", m_true, src) + b_true.view(1, 3, 1, 1)
    ct = ColourTransform(8)
    mean = lambda x: torch.nn.functional.adaptive_avg_pool2d(x, (8, 16)).mean(0)
    ct.fit(mean(src), mean(tgt), frames=len(src))
    assert int(ct.seen) == 6
    m, b = ct.domain_map(ST)
    torch.testing.assert_close(m, m_true, rtol=0, atol=2e-2)
    torch.testing.assert_close(b, b_true, rtol=0, atol=2e-2)
    assert abs(hue_angle(m.numpy()) - hue_angle(grade)) < 1.0
    # the reverse map is the inverse, and the layout loss is ~0 at the fitted map
    m2, b2 = ct.domain_map(TS)
    torch.testing.assert_close(m2 @ m, torch.eye(3), rtol=0, atol=3e-2)
    assert layout_colour_loss(m[None], b[None], *ct.means) < 1e-4
    assert layout_colour_loss(torch.eye(3)[None], torch.zeros(1, 3), *ct.means) > 0.05


def test_fit_without_statistics_is_the_identity():
    ct = ColourTransform(8)
    for route in (ST, TS, ("source", "source")):
        m, b = ct.domain_map(route)
        torch.testing.assert_close(m, torch.eye(3))
        torch.testing.assert_close(b, torch.zeros(3))
    w = fit_colour_map(torch.zeros(3, 8, 16), torch.zeros(3, 8, 16))
    torch.testing.assert_close(w, torch.cat([torch.eye(3), torch.zeros(3, 1)], 1))
    with pytest.raises(ValueError, match="unknown colour route"):
        ct.domain_map(("source", "synthia"))


def test_refinement_equal_codes_weights_and_one_map_per_image():
    torch.manual_seed(0)
    ct = ColourTransform(8)
    src = scenes()
    ct.fit(src.mean(0)[:, ::4, ::4], -src.mean(0)[:, ::4, ::4], 6)  # domain map ~ -I
    x, s1, s2 = src[:2], torch.randn(2, 8), torch.randn(2, 8)
    torch.testing.assert_close(ct(x, s1, s2, ST), -x, rtol=0, atol=2e-2)  # refinement starts at 0
    torch.testing.assert_close(ct(x, s1, s2, ("source", "source")), x)  # within a domain: identity
    half = ct(x, s1, s2, ST, weight=torch.tensor([0.5, 1.0]))  # style codes mixed half way
    torch.testing.assert_close(half[0], torch.zeros_like(x[0]), rtol=0, atol=2e-2)
    torch.testing.assert_close(half[1], -x[1], rtol=0, atol=2e-2)
    for p in ct.net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    y = ct(x, s1, s2, ST)
    torch.testing.assert_close(ct(x, s1, s1, ("source", "source")), x, rtol=0, atol=1e-6)
    assert (y + x).abs().mean() > 0.05  # the refinement follows the codes
    x2 = x.clone()
    x2[..., 1, :] = x2[..., 0, :]  # equal colours stay equal: one map for every pixel
    y2 = ct(x2, s1, s2, ST)
    torch.testing.assert_close(y2[..., 1, :], y2[..., 0, :])
    m, b = ct.matrix(s1, s2, ST)
    torch.testing.assert_close(y, torch.einsum("bij,bjhw->bihw", m, x) + b[:, :, None, None])


def test_translator_route_and_checkpointed_grads():
    torch.manual_seed(0)
    u = scenes(2)
    tr = DRANetTranslator(width=8, colour_transform=True)
    (c, s), (_, s_t) = tr.encode_many([(u, "source"), (-u, "target")])
    # at the start (identity domain map, zero refinement, zero generator output): the image
    torch.testing.assert_close(tr.decode(c, s_t, u, s, ST), u.clamp(-1 + 1e-3, 1 - 1e-3),
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="method.dranet.colour_transform"):
        tr.decode(c, s_t)
    grads = []
    for ck in (False, True):
        torch.manual_seed(1)
        tr = DRANetTranslator(width=8, colour_transform=True, checkpointing=ck)
        tr.colour.fit(u.mean(0)[:, ::4, ::4], -u.mean(0)[:, ::4, ::4], 2)
        for p in tr.colour.net.parameters():  # a trained head is not the zero init
            torch.nn.init.normal_(p, std=0.2)
        (c, s), (_, s_t) = tr.encode_many([(u, "source"), (-u.flip(0), "target")])
        tr.decode(c, s_t, u, s, ST).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in tr.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert grads[0]["colour.net.2.weight"].abs().sum() > 0
    assert grads[0]["generator.out.weight"].abs().sum() > 0  # the residual head learns too
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_a_fresh_fit_fits_the_domain_maps_to_whole_frames_and_a_resume_keeps_them(toy_root, tmp_path):
    from conftest import shrunk_config
    from uda import build
    cfg = shrunk_config(toy_root, tmp_path, "dranet")
    assert cfg.method.dranet.colour_transform  # the method's setting, toy and real
    module = build.build_module(cfg)
    ct = module.translator.colour
    assert int(ct.seen) == 0
    module.on_fit_start()
    assert int(ct.seen) == 12  # every whole training frame of the tiny set (12 per domain)
    ms, mt, n = build.layout_means(cfg, 256, ct.thumbnail)
    torch.testing.assert_close(ct.means, torch.stack([ms, mt]))
    torch.testing.assert_close(ct.maps[0], fit_colour_map(ms, mt))
    # the toy target is graded with a hue rotation of 45 +- 8 degrees (datamodules/toy.py; the
    # matrix with saturation and cast reads 44); 12 frames per domain give ~30
    assert 20 < hue_angle(ct.maps[0][:, :3].numpy()) < 70
    assert -70 < hue_angle(ct.maps[1][:, :3].numpy()) < -20
    sub = build.layout_means(cfg, 3, ct.thumbnail)  # evenly spaced subset
    assert sub[2] == 3 and not torch.allclose(sub[0], ms)
    ct.maps.fill_(0.5)  # a resumed run: the checkpoint's maps stay
    module.on_fit_start()
    assert torch.all(ct.maps == 0.5)
