"""DRANet translator modules, CADT and the perceptual network (CPU, small sizes)."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from uda.models.perceptual import LITE_CHANNELS, PerceptualNet
from uda.models.translation import (BatchInstanceNorm2d, Encoder, Generator, PatchDiscriminator,
                                    Separator, cadt_attention, cadt_mix)


@pytest.fixture(scope="module")
def translator():
    torch.manual_seed(0)
    enc = Encoder(width=8, num_down=2)
    sep = Separator(enc.out_channels)
    gen = Generator(enc.out_channels, style_dim=enc.out_channels, num_up=2)
    return enc, sep, gen


@pytest.mark.parametrize("size", [(64, 128), (96, 160)])
def test_round_trip_two_sizes_same_modules(translator, size):
    enc, sep, gen = translator
    x = torch.rand(2, 3, *size) * 2 - 1
    feat = enc(x)
    assert feat.shape == (2, 32, size[0] // 4, size[1] // 4)
    for domain in ("source", "target"):
        content, style = sep(feat, domain)
        assert content.shape == style.shape == feat.shape
        torch.testing.assert_close(content + style, feat, rtol=0, atol=1e-6)
    y = gen(content + style, style.mean(dim=(2, 3)))
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1
    y.mean().backward()  # the whole chain is differentiable
    assert enc.net[0].weight.grad is not None


def test_encoder_rejects_indivisible_size(translator):
    with pytest.raises(ValueError, match="divisible by 4"):
        translator[0](torch.zeros(1, 3, 30, 64))


def test_separator_weights_and_domains(translator):
    sep = translator[1]
    for d in ("source", "target"):
        assert sep.weights[d].shape == (1, 32, 1, 1)  # no spatial dims: resolution independent
    with pytest.raises(KeyError, match="source"):
        sep(torch.zeros(1, 32, 4, 4), "synthia")


def test_batch_instance_norm_limits():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6) * 3 + 1
    bin_ = BatchInstanceNorm2d(3)
    with torch.no_grad():
        bin_.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        bin_.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    w, b = bin_.weight.detach(), bin_.bias.detach()
    bin_.rho.data.fill_(1.0)
    expected_bn = F.batch_norm(x, None, None, w, b, training=True)
    torch.testing.assert_close(bin_(x), expected_bn, rtol=0, atol=1e-5)
    bin_(x).square().mean().backward()  # the clamp passes gradients to rho (straight-through)
    assert bin_.rho.grad is not None and bin_.rho.grad.abs().sum() > 0
    bin_.rho.data.fill_(0.0)
    torch.testing.assert_close(bin_(x), F.instance_norm(x, weight=w, bias=b), rtol=0, atol=1e-5)
    bin_.rho.data.fill_(3.0)  # the gate acts clamped to [0, 1]
    torch.testing.assert_close(bin_(x), expected_bn, rtol=0, atol=1e-5)


def test_cadt_attention_and_mix():
    torch.manual_seed(0)
    src = torch.randn(3, 16, 4, 4)
    tgt = torch.randn(5, 16, 6, 8)
    attn = cadt_attention(src, tgt, temperature=0.1)
    assert attn.shape == (3, 5)
    torch.testing.assert_close(attn.sum(1), torch.ones(3))

    tgt = torch.randn(5, 16, 4, 4)
    tgt[2] = src[1]  # an exact copy of source 1's content
    sharp = cadt_attention(src, tgt, temperature=1e-4)
    assert sharp[1, 2] > 0.999

    flat = cadt_attention(src, tgt, temperature=1e6)
    torch.testing.assert_close(flat, torch.full((3, 5), 0.2))
    styles = torch.randn(5, 16, 6, 8)
    mean = styles.mean(0, keepdim=True).expand(3, -1, -1, -1)
    torch.testing.assert_close(cadt_mix(flat, styles), mean)
    assert cadt_mix(sharp, torch.randn(5, 16, 16)).shape == (3, 16, 16)
    with pytest.raises(ValueError):
        cadt_attention(src, tgt, temperature=0)
    with pytest.raises(ValueError):
        cadt_mix(attn, styles[:4])


def test_patch_discriminator():
    d = PatchDiscriminator(width=8, num_layers=3)
    assert d(torch.zeros(2, 3, 64, 128)).shape == (2, 1, 6, 14)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(parametrize.is_parametrized(c, "weight") for c in convs)
    norms = (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)
    assert not any(isinstance(m, norms) for m in d.modules())
    plain = PatchDiscriminator(width=8, spectral_norm=False)
    assert not any(parametrize.is_parametrized(c, "weight")
                   for c in plain.modules() if isinstance(c, torch.nn.Conv2d))


def _check_frozen(net):
    assert not any(p.requires_grad for p in net.parameters())
    parent = torch.nn.Sequential(net)
    parent.train()
    assert not net.training and not any(m.training for m in net.modules())


def test_perceptual_lite():
    net = PerceptualNet(kind="lite", content_layer="relu3_1")
    assert not net.is_pretrained
    _check_frozen(net)
    x = (torch.rand(2, 3, 32, 48) * 2 - 1).requires_grad_()
    out = net(x)
    assert set(out) == {"relu1_1", "relu2_1", "relu3_1", "relu4_1"}
    for name, f in out.items():
        assert f.shape[1] == LITE_CHANNELS[name] == net.channels[name]
    sum(f.mean() for f in out.values()).backward()
    assert x.grad is not None and all(p.grad is None for p in net.parameters())
    again = PerceptualNet(kind="lite", content_layer="relu3_1")  # fixed seed: same features
    torch.testing.assert_close(again(x.detach())["relu4_1"], out["relu4_1"].detach())
    with pytest.raises(ValueError, match="relu5_1"):
        PerceptualNet(kind="lite", style_layers=("relu5_1",))


def test_perceptual_vgg19_weights(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers
    torch.manual_seed(1)
    ref = make_layers(cfgs["E"])  # torchvision's vgg19().features, without the big classifier
    path = tmp_path / "vgg19.pth"
    # torchvision layout ("features.N.*" + "classifier.*"); a tiny stand-in classifier keeps the
    # file small, it is ignored by the loader anyway
    state = {f"features.{k}": v for k, v in ref.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, path)
    net = PerceptualNet(kind="vgg19", weights=str(path))
    assert net.is_pretrained
    _check_frozen(net)
    for i, layer in enumerate(net.features):
        if isinstance(layer, torch.nn.Conv2d):
            torch.testing.assert_close(layer.weight, ref[i].weight, rtol=0, atol=0)
    assert len(net.features) == 21  # stops at relu4_1 (index 20)
    out = net(torch.zeros(1, 3, 32, 32))
    assert {k: v.shape[1] for k, v in out.items()} == {
        "relu4_1": 512, "relu1_1": 64, "relu2_1": 128, "relu3_1": 256}

    feat_only = tmp_path / "features.pth"
    torch.save(ref.state_dict(), feat_only)
    assert PerceptualNet(kind="vgg19", weights=str(feat_only)).is_pretrained

    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pth"):
        PerceptualNet(kind="vgg19", weights=str(bad))


def test_perceptual_vgg19_without_weights_warns():
    with pytest.warns(UserWarning, match="not a perceptual metric"):
        net = PerceptualNet(kind="vgg19", content_layer="relu2_1", style_layers=("relu1_1",))
    assert not net.is_pretrained
    assert len(net.features) == 7  # relu2_1 is index 6
    with pytest.raises(ValueError):
        PerceptualNet(kind="resnet")


def test_modulated_generator_is_styled_by_the_code_at_any_size():
    from uda.models.dranet import DRANetTranslator
    from uda.models.translation import StyleModulation
    torch.manual_seed(0)
    g = Generator(32, style_dim=32, num_up=2)
    feat = torch.randn(2, 32, 8, 16)
    s0 = torch.zeros(2, 32)
    # zero-initialised modulation: the style code has no effect at the start
    assert torch.equal(g(feat, s0), g(feat, torch.randn(2, 32)))
    for m in g.modules():
        if isinstance(m, StyleModulation):
            torch.nn.init.normal_(m.affine.weight, std=0.5)
    a, b = g(feat, s0), g(feat, torch.randn(2, 32))
    assert a.shape == (2, 3, 32, 64) and not torch.allclose(a, b)
    assert g(torch.randn(1, 32, 12, 20), torch.randn(1, 32)).shape == (1, 3, 48, 80)
    tr = DRANetTranslator(width=8, num_down=2)
    c, s = tr.encode(torch.rand(2, 3, 32, 64) * 2 - 1, "source")
    assert s.shape == (2, 32, 1, 1) and tr.decode(c, s).shape == (2, 3, 32, 64)


def test_building_the_lite_network_leaves_the_global_rng_alone():
    # the translation-quality callback builds one during training: it must not change the run
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = PerceptualNet(kind="lite")
    assert torch.equal(torch.rand(3), expected)
    b = PerceptualNet(kind="lite")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_patch_discriminator_pickles_with_its_state():
    """ddp_spawn sends the model to its processes by pickling; torch refuses to pickle
    spectrally normalised convs, so the discriminator pickles as arguments + state dict."""
    import pickle
    d = PatchDiscriminator(3, 8, 3)
    x = torch.randn(2, 3, 64, 64)
    d(x)  # training mode: the power iteration moves the spectral-norm vectors
    e = pickle.loads(pickle.dumps(d))
    assert e.training and e.init_args == (3, 8, 3, True)
    for (k, a), (k2, b) in zip(d.state_dict().items(), e.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    torch.testing.assert_close(e.eval()(x), d.eval()(x), rtol=0, atol=0)


def test_generator_computes_in_float32_under_bf16_autocast():
    """Mixed precision leaves the translator's image in float32: under bf16 autocast the
    generator's output equals its float32 output (bf16 would round it to ~2^-8, the size of
    the reconstruction residuals, and flip the L1 gradient's signs)."""
    torch.manual_seed(0)
    gen = Generator(16, 8, num_up=2)
    feat, style = torch.randn(2, 16, 4, 4), torch.randn(2, 8)
    ref = gen(feat, style)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gen(feat, style)
        conv = gen.out(torch.randn(1, gen.out.in_channels, 4, 4))
    assert conv.dtype == torch.bfloat16  # what autocast does to a plain conv
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
