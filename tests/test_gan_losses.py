"""GAN and translation losses against values computed by hand."""
import math

import pytest
import torch

from uda.losses.gan import discriminator_loss, generator_loss
from uda.losses.translation import (consistency_loss, content_loss, gram_matrix,
                                    reconstruction_loss, style_loss)

REAL = torch.tensor([0.5, 2.0])
FAKE = torch.tensor([-2.0, 0.0])


def close(a, b):
    assert abs(float(a) - b) < 1e-6, (float(a), b)


def test_hinge():
    # D: mean(relu(1 - [0.5, 2])) = mean([0.5, 0]) = 0.25
    #    + mean(relu(1 + [-2, 0])) = mean([0, 1]) = 0.5
    close(discriminator_loss(REAL, FAKE, "hinge"), 0.75)
    close(generator_loss(FAKE, "hinge"), 1.0)  # -mean([-2, 0])


def test_lsgan():
    # D: mean([0.25, 1]) + mean([4, 0]) = 0.625 + 2 = 2.625; G: mean([9, 1]) = 5
    close(discriminator_loss(REAL, FAKE, "lsgan"), 2.625)
    close(generator_loss(FAKE, "lsgan"), 5.0)


def test_vanilla():
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    d = (-(math.log(sig(0.5)) + math.log(sig(2.0))) / 2
         - (math.log(1 - sig(-2.0)) + math.log(1 - sig(0.0))) / 2)
    close(discriminator_loss(REAL, FAKE, "vanilla"), d)
    close(generator_loss(FAKE, "vanilla"), -(math.log(sig(-2.0)) + math.log(sig(0.0))) / 2)


def test_generator_towards_label_0():
    """read_as=0 (the output-space recipe: target outputs should read as source, label 0)."""
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    close(generator_loss(FAKE, "hinge", read_as=0), -1.0)  # +mean([-2, 0])
    close(generator_loss(FAKE, "lsgan", read_as=0), 2.0)   # mean([4, 0])
    close(generator_loss(FAKE, "vanilla", read_as=0),
          -(math.log(1 - sig(-2.0)) + math.log(1 - sig(0.0))) / 2)
    with pytest.raises(ValueError, match="read_as must be 1 .real. or 0 .fake., got 2"):
        generator_loss(FAKE, "vanilla", read_as=2)


def test_unknown_kind_and_shapes():
    with pytest.raises(ValueError, match="wgan"):
        discriminator_loss(REAL, FAKE, "wgan")
    with pytest.raises(ValueError, match="hinge"):
        generator_loss(FAKE, "wgan")
    # patch maps of different shapes; gradients reach the logits
    real = torch.randn(2, 1, 3, 5, requires_grad=True)
    fake = torch.randn(2, 1, 4, 4, requires_grad=True)
    (discriminator_loss(real, fake, "hinge") + generator_loss(fake, "lsgan")).backward()
    assert real.grad is not None and fake.grad is not None


def test_reconstruction_and_consistency():
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    close(reconstruction_loss(x, y, "l1"), 1.5)
    close(reconstruction_loss(x, y, "l2"), 2.5)
    close(consistency_loss(x, y), 1.5)
    with pytest.raises(ValueError):
        reconstruction_loss(x, y, "l3")


def test_gram_matrix_by_hand():
    # 2 channels on a 1x2 map: c0 = [1, 2], c1 = [3, 0]; C*H*W = 4
    feat = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    expected = torch.tensor([[[5.0, 3.0], [3.0, 9.0]]]) / 4
    torch.testing.assert_close(gram_matrix(feat), expected)
    # resolution independence: tiling the map leaves the Gram matrix unchanged
    torch.testing.assert_close(gram_matrix(feat.repeat(1, 1, 3, 2)), expected)


def test_content_and_style_loss():
    a = torch.zeros(1, 1, 2, 2)
    b = torch.tensor([[[[1.0, 0.0], [0.0, 3.0]]]])
    close(content_loss(a, b), 2.5)
    g = {"relu1_1": torch.eye(2)[None], "relu2_1": torch.ones(1, 3, 3)}
    close(style_loss(g, {k: v.clone() for k, v in g.items()}), 0.0)
    # one layer differs by 1 in one of 4 entries, the other by 2 in all of 9: 0.25 + 4
    h = {"relu1_1": torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]), "relu2_1": torch.ones(1, 3, 3) * 3}
    close(style_loss(g, h), 4.25)
    close(style_loss(list(g.values()), list(h.values())), 4.25)
    with pytest.raises(ValueError):
        style_loss(g, {"relu1_1": g["relu1_1"]})


def test_normalised_content_loss_ignores_per_channel_statistics():
    from uda.losses.translation import content_loss, instance_normalize
    torch.manual_seed(0)
    a = torch.randn(2, 3, 5, 7)
    b = a * torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1) + torch.tensor([1.0, -4.0, 9.0]).view(1, 3, 1, 1)
    assert content_loss(a, b) > 1.0                      # plain: the style change is penalised
    assert content_loss(a, b, normalize=True) < 1e-6     # normalised: only layout counts
    flipped = torch.flip(a, dims=[3])
    assert content_loss(a, flipped, normalize=True) > 0.1  # a different layout still costs
    n = instance_normalize(a)
    assert torch.allclose(n.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-6)
    assert torch.allclose(n.var(dim=(2, 3), unbiased=False), torch.ones(2, 3), atol=1e-3)


def test_gram_matrix_stays_float32_under_float16_autocast():
    """A 16-mixed run autocasts matmuls to float16: the Gram of a full frame's features (sums of
    ~1e9) would overflow to inf; gram_matrix and the layout loss compute in float32."""
    feat = torch.full((1, 2, 64, 64), 300.0)
    with torch.autocast("cpu", dtype=torch.float16):
        raw = feat.reshape(1, 2, -1) @ feat.reshape(1, 2, -1).transpose(1, 2)
        g = gram_matrix(feat)
    assert raw.dtype == torch.float16 and not torch.isfinite(raw).all()  # what autocast does
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, torch.full((1, 2, 2), 300.0 ** 2 / 2))
