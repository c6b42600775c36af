"""The official-protocol baseline configs (configs/gta5_cityscapes/*_official.yaml): each loads
with the settings of its reference code, and each trains 2 iterations on the toy data with those
settings (only sizes, roots and the iteration count shrunk)."""
import pytest
import torch

from conftest import REPO
from uda import build
from uda.config import ConfigError, load_config

OFFICIAL = REPO / "configs" / "gta5_cityscapes"
ROOTS = ["data.source.root=/data/gta5", "data.target.root=/data/cityscapes"]
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # AdaptSegNet/ADVENT/DACS IMG_MEAN
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def official(name, *extra):
    return load_config(OFFICIAL / f"{name}_official.yaml", [*ROOTS, *extra])


def imagenet_rgb_data(t):
    """The data pipeline keeps its one RGB space (ImageNet mean / std): the network converts."""
    return (list(t.mean), list(t.std)) == IMAGENET


def official_network(m, multi_level, branches):
    """DeepLabV2-ResNet101 in the Caffe layout reading Caffe inputs, BN in training mode with
    fixed affine parameters, `branches` ASPP convolutions per head."""
    return ((m.name, m.backbone, m.layout, m.input_convention, m.multi_level, m.aspp_branches,
             m.freeze_bn, m.freeze_bn_affine) ==
            ("deeplabv2", "resnet101", "caffe", "caffe_bgr", multi_level, branches, False, True))


@pytest.mark.parametrize("name,stop,d_input,branches", [("adaptsegnet", 150000, "softmax", 2),
                                                         ("advent", 120000, "entropy", 4)])
def test_adversarial_official_configs_load_with_the_reference_protocol(name, stop, d_input,
                                                                       branches):
    c = official(name)
    assert (c.trainer.max_steps, c.method.optim.poly_horizon) == (stop, 250000)
    o = c.method.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.poly_power) == ("sgd", 2.5e-4, 0.9, 5e-4, 0.9)
    a = c.method.adversarial
    assert (c.method.name, a.d_input, a.gan_loss, a.d_lr, a.d_width) == (
        "adversarial", d_input, "vanilla", 1e-4, 64)
    assert (a.multi_level, a.lambda_adv, a.lambda_aux_adv, a.lambda_aux_seg) == (True, 1e-3, 2e-4, 0.1)
    assert c.data.batch_size == 1
    d = c.data
    for t, size in ((d.source_transform, [720, 1280]), (d.target_transform, [512, 1024]),
                    (d.eval_transform, [512, 1024])):
        assert list(t.resize) == size and t.crop is None and t.scale_range is None
        assert t.hflip == 0.0 and t.jitter == 0.0 and imagenet_rgb_data(t)
    assert official_network(c.model, multi_level=True, branches=branches)
    assert not any(getattr(d.debias, k).enabled for k in ("cutmix", "classmix", "mixup"))


def test_dacs_official_config_loads_with_the_reference_protocol():
    c = official("dacs")
    assert (c.method.name, c.trainer.max_steps, c.method.optim.poly_horizon) == (
        "self_training", 250000, 250000)
    assert c.data.batch_size == 2
    d = c.data
    for t, size in ((d.source_transform, [720, 1280]), (d.target_transform, [512, 1024])):
        assert list(t.resize) == size and list(t.crop) == [512, 512]
        assert t.scale_range is None and t.hflip == 0.0 and imagenet_rgb_data(t)
    assert list(d.eval_transform.resize) == [512, 1024] and imagenet_rgb_data(d.eval_transform)
    x = c.method.self_training
    assert (x.threshold, x.ema, x.weight, x.pseudo_weight) == (0.968, 0.99, 1.0, "batch")
    assert official_network(c.model, multi_level=False, branches=2)


def test_poly_horizon_below_max_steps_is_refused():
    with pytest.raises(ConfigError, match=r"method\.optim\.poly_horizon=1000 is below "
                                          r"trainer\.max_steps=120000"):
        official("advent", "method.optim.poly_horizon=1000")


def shrunk_official(name, toy_root, tmp_path, *extra):
    """The official config with only sizes, roots, workers and the iteration count shrunk."""
    return official(name, f"data.source.root={toy_root / 'source'}",
                    f"data.target.root={toy_root / 'target'}", f"run.dir={tmp_path / 'run'}",
                    "data.num_workers=0", "data.persistent_workers=false", "data.pin_memory=false",
                    "data.source_transform.resize=[32,64]", "data.target_transform.resize=[32,64]",
                    "data.eval_transform.resize=[32,64]",
                    "trainer.max_steps=2", "trainer.val_every=2", "trainer.accelerator=cpu",
                    "trainer.progress_bar=false", "logger.name=csv", *extra)


@pytest.mark.slow  # DeepLabV2-ResNet101 built and trained on CPU: about 10 s each
@pytest.mark.parametrize("name,branches", [("adaptsegnet", 2), ("advent", 4), ("dacs", 2)])
def test_official_configs_train_two_iterations_on_toy_data(toy_root, tmp_path, name, branches):
    """Each official config, only sizes shrunk, trains 2 iterations; its checkpoint records the
    network settings (a resume or evaluation rebuilds the same network)."""
    from omegaconf import OmegaConf

    from uda.train import train
    extra = ["data.source_transform.crop=[32,32]", "data.target_transform.crop=[32,32]"] \
        if name == "dacs" else []
    cfg = shrunk_official(name, toy_root, tmp_path, *extra)
    results = train(cfg)
    assert results["num_images"] == 5 and 0.0 <= results["mIoU"] <= 100.0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    saved = OmegaConf.create(ckpt["uda"]["config"]).model
    assert (saved.layout, saved.input_convention, saved.aspp_branches, saved.freeze_bn_affine) == (
        "caffe", "caffe_bgr", branches, True)
    bn = ckpt["state_dict"]["segmenter.backbone.bn1.weight"]
    assert torch.equal(bn, torch.ones_like(bn))  # BN affine parameters never trained


def test_official_input_is_the_official_preprocessing():
    """AdaptSegNet / ADVENT / DACS datasets: float32 RGB image, [:, :, ::-1] to BGR, minus
    IMG_MEAN, HWC -> CHW (at native size here: their resize is PIL bicubic, ours cv2 bilinear).
    Ours: the data pipeline's ImageNet RGB tensor, converted by the network of the official
    config (model.input_convention=caffe_bgr): equal to float32 rounding on the 0-255 scale. The
    same tensor is what panels and the translator read (ImageNet RGB), displayed as the image."""
    import numpy as np

    from datamodules.transforms import transform_from_config
    from uda.modules import SourceOnly
    cfg = official("advent", "model.backbone=resnet50")  # the input conversion is the same
    t = cfg.data.eval_transform
    t.resize = None
    image = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    ref = np.asarray(image, np.float32)[:, :, ::-1] - np.array(CAFFE_BGR_MEAN, dtype=np.float32)
    x, _ = transform_from_config(t, train=False)(image, None)
    net = build.build_segmenter(cfg)
    ours = net.input(x[None])[0]
    torch.testing.assert_close(ours, torch.from_numpy(ref.transpose((2, 0, 1)).copy()),
                               rtol=0, atol=3e-5)
    module = SourceOnly(net, ["c"] * 19, image_mean=t.mean, image_std=t.std)
    rgb = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    torch.testing.assert_close(module.to_display(x[None]), rgb)


def test_freeze_bn_affine_keeps_bn_parameters_and_trains_statistics(toy_root, tmp_path):
    """The official DeepLabV2: BN layers in training mode (batch statistics, running statistics
    updated), weight and bias never trained (and in no optimizer group)."""
    from conftest import shrunk_config
    cfg = shrunk_config(toy_root, tmp_path, "source_only", "model.freeze_bn_affine=true")
    net = build.build_segmenter(cfg)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not p.requires_grad for m in bns for p in m.parameters())
    in_groups = {id(p) for g in net.param_groups(1e-3) for p in g["params"]}
    assert not in_groups & {id(p) for m in bns for p in m.parameters()}
    assert in_groups  # the convolutions still train
    net.train()
    before = [(m.weight.clone(), m.running_mean.clone()) for m in bns]
    opt = torch.optim.SGD([p for g in net.param_groups(0.1) for p in g["params"]], lr=0.1)
    loss = net(torch.randn(2, 3, 16, 32)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    assert all(m.training for m in bns)
    assert all(torch.equal(m.weight, w) and not torch.equal(m.running_mean, r)
               for m, (w, r) in zip(bns, before))
