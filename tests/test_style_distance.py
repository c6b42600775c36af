"""uda.metrics.style_distance: closed-form values of the descriptor, the Fréchet distance and the
gap closed."""
import math

import numpy as np
import pytest
import torch

from uda.metrics.style_distance import (COLOUR_DIMS, colour_descriptor, feature_descriptor,
                                        frechet_distance, gap_closed, gaussian_frechet,
                                        style_descriptor, style_distances)


def _sample(mu, cov, n, seed):
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.multivariate_normal(np.asarray(mu, float), np.asarray(cov, float), n))


def _reference_frechet(mu1, c1, mu2, c2):
    from scipy.linalg import sqrtm
    mu1, mu2, c1, c2 = (np.asarray(v, float) for v in (mu1, mu2, c1, c2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real))


def test_gaussian_frechet_one_dimension():
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2
    d = gaussian_frechet(torch.tensor([1.0]), torch.tensor([[4.0]]),
                         torch.tensor([-2.0]), torch.tensor([[0.25]]))
    assert d == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_gaussian_frechet_diagonal_and_general_covariances():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    v1, v2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0  # per dimension, commuting case
    assert gaussian_frechet(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(expected)
    # non-commuting covariances against scipy's general matrix square root
    a = torch.tensor([[2.0, 0.8, 0.1], [0.8, 1.0, -0.3], [0.1, -0.3, 0.5]])
    b = torch.tensor([[0.7, -0.2, 0.0], [-0.2, 1.5, 0.6], [0.0, 0.6, 2.2]])
    assert gaussian_frechet(mu1, a, mu2, b) == pytest.approx(
        _reference_frechet(mu1, a, mu2, b), rel=1e-9)
    assert gaussian_frechet(mu1, a, mu1, a) == pytest.approx(0.0, abs=1e-9)


def test_sample_frechet_matches_the_closed_form_for_large_sets():
    mu1, mu2 = [0.0, 0.0, 1.0], [0.5, -1.0, 1.0]
    c1 = [[1.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 0.5]]
    c2 = [[0.5, 0.0, 0.1], [0.0, 1.0, -0.4], [0.1, -0.4, 1.5]]
    d = frechet_distance(_sample(mu1, c1, 200_000, 0), _sample(mu2, c2, 200_000, 1))
    assert d == pytest.approx(_reference_frechet(mu1, c1, mu2, c2), rel=0.02)


def test_frechet_identical_symmetric_and_translation_invariant():
    a = _sample([0, 0, 0, 0], np.eye(4), 500, 0)
    b = _sample([1, 0, -1, 2], np.diag([1.0, 2.0, 0.5, 1.0]), 700, 1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    d = frechet_distance(a, b)
    assert d > 0 and frechet_distance(b, a) == pytest.approx(d, rel=1e-9)
    shift = torch.tensor([3.0, -2.0, 0.5, 10.0], dtype=torch.float64)
    assert frechet_distance(a + shift, b + shift) == pytest.approx(d, rel=1e-9)
    # equal covariances: only the means differ, the distance is ||shift||^2
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-9)
    # scaling both sets by c scales the distance by c^2
    assert frechet_distance(3 * a, 3 * b) == pytest.approx(9 * d, rel=1e-6)


def test_frechet_with_fewer_samples_than_dimensions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 60, generator=g), torch.randn(8, 60, generator=g) + 0.5
    d = frechet_distance(a, b)
    assert math.isfinite(d) and d > 0
    assert frechet_distance(b, a) == pytest.approx(d, rel=1e-6)
    assert frechet_distance(a, a.clone()) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a[:1], b[:1]) == pytest.approx(float((a[0] - b[0]).square().sum()))
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :10])


def test_gap_closed():
    assert gap_closed(0.0, 4.0) == 1.0
    assert gap_closed(4.0, 4.0) == 0.0
    assert gap_closed(1.0, 4.0) == 0.75
    assert gap_closed(8.0, 4.0) == -1.0
    assert math.isnan(gap_closed(1.0, 0.0))


def test_colour_descriptor_closed_form():
    img = torch.zeros(1, 3, 4, 4)
    img[:, :, :2] = 1.0  # half white, half black: mean 0.5, std 0.5 per channel, grey (no chroma)
    d = colour_descriptor(img)[0]
    assert d.shape == (COLOUR_DIMS,)
    torch.testing.assert_close(d[:3], torch.full((3,), 0.5))
    torch.testing.assert_close(d[3:6], torch.full((3,), 0.5))
    torch.testing.assert_close(d[6:], torch.tensor([0.0, 0.0, 0.5 * math.sqrt(3)]))
    red = torch.tensor([1.0, 0.2, 0.4]).view(1, 3, 1, 1).expand(2, 3, 5, 7)
    d = colour_descriptor(red)
    torch.testing.assert_close(d[:, :3], torch.tensor([[1.0, 0.2, 0.4]] * 2))
    torch.testing.assert_close(d[:, 3:], torch.zeros(2, 6))
    # statistics ignore the layout: shuffling pixels changes nothing
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    shuffled = x.flatten(2)[:, :, perm].view(1, 3, 8, 8)
    torch.testing.assert_close(colour_descriptor(x), colour_descriptor(shuffled))


def test_feature_and_style_descriptor_with_the_lite_network():
    from uda.models.perceptual import PerceptualNet
    f = [torch.ones(2, 4, 3, 3), torch.arange(2 * 5 * 2 * 2, dtype=torch.float).view(2, 5, 2, 2)]
    d = feature_descriptor(f)
    assert d.shape == (2, 2 * (4 + 5))
    torch.testing.assert_close(d[:, :4], torch.ones(2, 4))
    torch.testing.assert_close(d[:, 4:8], torch.zeros(2, 4))
    torch.testing.assert_close(d[0, 8], torch.tensor(1.5))  # mean of 0, 1, 2, 3
    net = PerceptualNet("lite", content_layer="relu3_1", style_layers=("relu1_1", "relu2_1"))
    u = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        s = style_descriptor(u, net)
        again = torch.cat([style_descriptor(u[i:i + 1], net) for i in range(3)])
    assert s.shape == (3, COLOUR_DIMS + 2 * (16 + 32 + 64))
    torch.testing.assert_close(s, again, rtol=1e-5, atol=1e-6)  # per image, batch-independent
    torch.testing.assert_close(s[:, :COLOUR_DIMS], colour_descriptor((u + 1) / 2))


def test_style_distances_parts():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(30, 12, generator=g)
    tgt = torch.randn(30, 12, generator=g) + 2.0
    out = style_distances(src, tgt.clone(), tgt, colour_dims=4)
    for part in ("style", "colour", "texture"):
        assert out[f"{part}_fd_source_target"] > 0
        assert out[f"{part}_fd_translated_target"] == pytest.approx(0.0, abs=1e-6)
        assert out[f"{part}_gap_closed"] == pytest.approx(1.0)
    same = style_distances(src, src, tgt, colour_dims=4)
    assert same["style_gap_closed"] == pytest.approx(0.0, abs=1e-12)
