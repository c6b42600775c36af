"""Parity of the baselines' losses and of the DACS / DAFormer pieces with their official code.

Each test re-implements the reference computation in plain torch from the official code's
formula (named per test: valeoai/ADVENT, wasidennis/AdaptSegNet, vikolss/DACS, lhoyer/DAFormer)
and asserts that ours equals it to float tolerance. Where ours differs on purpose, the test pins
the difference; README "Baselines: official protocols" gives the reasons.
"""
from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import shrunk_config
from datamodules.debias import RareClassSampler, class_mix_mask, classmix, rare_class_probabilities
from datamodules.debias.photometric import blur_kernel_size, colour_jitter, strong_transform
from datamodules.labels import CLASS_NAMES
from uda import build
from uda.losses.entropy import entropy_loss, entropy_map, self_information
from uda.losses.gan import discriminator_loss, generator_loss
from uda.losses.pseudo_label import pseudo_label
from uda.losses.segmentation import segmentation_ce
from uda.models import SmallSegNet
from uda.models.discriminators import OutputDiscriminator
from uda.models.ema_teacher import EMATeacher
from uda.modules.adversarial import OutputSpaceAdversarial
from uda.modules.self_training import SelfTraining
from uda.methods import OptimConfig

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def probs(seed=0, b=2, c=19, h=5, w=7) -> torch.Tensor:
    """Softmax maps with confident, uniform and exactly one-hot pixels."""
    p = torch.softmax(4 * torch.randn(b, c, h, w, generator=gen(seed)), 1)
    p[0, :, 0, 0] = 1.0 / c                  # uniform: entropy log C
    p[0, :, 0, 1] = 0.0
    p[0, 3, 0, 1] = 1.0                      # one-hot: exact zeros
    return p


# ---------------------------------------------------------------- ADVENT (advent/utils/func.py, loss.py)

def advent_prob_2_entropy(prob):
    """ADVENT's prob_2_entropy: -p log2(p + 1e-30) / log2(C)."""
    c = prob.shape[1]
    return -prob * torch.log2(prob + 1e-30) / math.log2(c)


def advent_entropy_loss(v):
    """ADVENT's entropy_loss: -sum(v log2(v + 1e-30)) / (n h w log2(c))."""
    n, c, h, w = v.shape
    return -torch.sum(v * torch.log2(v + 1e-30)) / (n * h * w * math.log2(c))


def test_self_information_is_advents_prob_2_entropy():
    p = probs()
    torch.testing.assert_close(self_information(p), advent_prob_2_entropy(p))
    ent = entropy_map(p)
    torch.testing.assert_close(ent, advent_prob_2_entropy(p).sum(1))
    assert ent[0, 0, 0].item() == pytest.approx(1.0) and ent[0, 0, 1].item() == 0.0
    torch.testing.assert_close(entropy_map(p, normalise=False), -(p * torch.log(p + 1e-30)).sum(1))


def test_entropy_loss_is_advents():
    logits = 3 * torch.randn(2, 19, 6, 4, generator=gen(1))
    torch.testing.assert_close(entropy_loss(logits), advent_entropy_loss(torch.softmax(logits, 1)))


def test_adversarial_entropy_input_is_advents():
    module = OutputSpaceAdversarial(SmallSegNet(num_classes=19, width=8), CLASS_NAMES,
                                    d_input="entropy")
    logits = 3 * torch.randn(2, 19, 6, 4, generator=gen(2))
    torch.testing.assert_close(module.d_input_map(logits),
                               advent_prob_2_entropy(F.softmax(logits, 1)))


# ---------------------------------------------------------------- GAN losses (AdaptSegNet, ADVENT)
# Official labels: source 0, target 1; D's loss halved per domain; G: D(target) -> source. Ours
# the same, so our D's output is the official one (an official D state dict computes as ours).

def official_d(o_src, o_tgt, crit):
    return (crit(o_src, torch.zeros_like(o_src)) / 2 + crit(o_tgt, torch.ones_like(o_tgt)) / 2)


def official_g(o_tgt, crit):
    return crit(o_tgt, torch.zeros_like(o_tgt))


BCE, MSE = F.binary_cross_entropy_with_logits, F.mse_loss


@pytest.mark.parametrize("kind,crit", [("vanilla", BCE), ("lsgan", MSE)])
def test_vanilla_and_ls_gan_losses_are_the_official_ones(kind, crit):
    """AdaptSegNet --gan Vanilla (ADVENT's bce_loss) / --gan LS (MSELoss on the same labels):
    the recipe's calls (D: target as real, source as fake; G: target read as 0) on D's output
    as it is."""
    o_src, o_tgt = torch.randn(2, 1, 3, 5, generator=gen(3)), torch.randn(2, 1, 4, 4, generator=gen(4))
    torch.testing.assert_close(0.5 * discriminator_loss(o_tgt, o_src, kind),
                               official_d(o_src, o_tgt, crit))
    torch.testing.assert_close(generator_loss(o_tgt, kind, read_as=0), official_g(o_tgt, crit))


class KeepStepInputs(pl.Callback):
    """A copy of the module and of the batch as the iteration starts (before any step)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.module, self.batch = copy.deepcopy(pl_module), copy.deepcopy(batch)


def test_adversarial_recipe_minimises_the_official_discriminator_loss(toy_root, tmp_path):
    """One iteration of our recipe: the logged D loss and adversarial loss are the official
    ones (halved BCE; BCE of D(target) against the source label 0, times lambda_adv) of the
    discriminator before its step, as it is, on the segmenter's outputs before its step."""
    cfg = shrunk_config(toy_root, tmp_path, "adversarial", "method.adversarial.d_input=entropy",
                        "trainer.max_steps=1")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    keep = KeepStepInputs()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         limit_val_batches=0, use_distributed_sampler=False, callbacks=[keep])
    trainer.fit(module, datamodule=dm)
    before, batch = keep.module, keep.batch
    with torch.no_grad():
        maps = [advent_prob_2_entropy(F.softmax(before.segmenter(batch[k]["image"]), 1))
                for k in ("source", "target")]
        o_src, o_tgt = (before.discriminators["main"](m) for m in maps)
    metrics = trainer.callback_metrics
    expected = official_d(o_src, o_tgt, BCE)
    assert metrics["train/loss_d"].item() == pytest.approx(expected.item(), rel=1e-5)
    expected = before.lambda_adv * official_g(o_tgt, BCE)
    assert metrics["train/adv_main"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["vanilla", "lsgan", "hinge"])
def test_checkpoint_with_the_old_discriminator_labels_is_converted(kind):
    """A checkpoint written when D read source as 1 (no "discriminator_labels" entry): loading
    converts D and its Adam state so that the new labels give the old game's losses, and the
    next Adam step of the new game is the old game's step, mirrored."""
    from uda.modules.adversarial import D_LABELS
    torch.manual_seed(0)
    old = OutputSpaceAdversarial(SmallSegNet(num_classes=19, width=8), CLASS_NAMES, gan_loss=kind)
    adam = dict(lr=1e-2, betas=(0.9, 0.99))
    opt_old = torch.optim.Adam(old.discriminators.parameters(), **adam)
    xs, xt = (torch.softmax(3 * torch.randn(2, 19, 64, 64, generator=gen(20 + k)), 1) for k in (0, 1))
    d_old = old.discriminators["main"]

    def step(opt, loss):
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(opt_old, discriminator_loss(d_old(xs), d_old(xt), kind))  # the old labels: source 1
    ckpt = {"state_dict": copy.deepcopy(old.state_dict()),
            "optimizer_states": [{}, copy.deepcopy(opt_old.state_dict())]}
    new = OutputSpaceAdversarial(SmallSegNet(num_classes=19, width=8), CLASS_NAMES, gan_loss=kind)
    new.on_load_checkpoint(ckpt)
    new.load_state_dict(ckpt["state_dict"])
    opt_new = torch.optim.Adam(new.discriminators.parameters(), **adam)
    opt_new.load_state_dict(ckpt["optimizer_states"][1])
    d_new = new.discriminators["main"]
    with torch.no_grad():
        torch.testing.assert_close(discriminator_loss(d_new(xt), d_new(xs), kind),
                                   discriminator_loss(d_old(xs), d_old(xt), kind))
        torch.testing.assert_close(generator_loss(d_new(xt), kind, read_as=0),
                                   generator_loss(d_old(xt), kind))
    step(opt_old, discriminator_loss(d_old(xs), d_old(xt), kind))
    step(opt_new, discriminator_loss(d_new(xt), d_new(xs), kind))
    with torch.no_grad():
        mirrored = (1 - d_old(xt)) if kind == "lsgan" else -d_old(xt)
        torch.testing.assert_close(d_new(xt), mirrored, rtol=1e-5, atol=1e-5)
        assert (d_new(xt) - d_old(xt)).abs().max() > 0.1  # not the unconverted D
    assert ckpt["discriminator_labels"] == D_LABELS
    saved = {}
    new.on_save_checkpoint(saved)
    assert saved == {"discriminator_labels": D_LABELS}
    current = {"state_dict": copy.deepcopy(new.state_dict()), "discriminator_labels": D_LABELS}
    new.on_load_checkpoint(current)  # a checkpoint with the current labels is left as it is
    assert all(torch.equal(v, current["state_dict"][k]) for k, v in new.state_dict().items())


def test_adam_scaled_loss_is_adam_with_scaled_eps():
    """Adam(c * grad, eps) == Adam(grad, eps / c): D trained on our unhalved `discriminator_loss`
    with eps 2e-8 is D trained on the official halved loss (the same value as 0.5 * ours: test
    above) with eps 1e-8, bit for bit (a factor 2 is exact in floating point). At equal eps the
    two differ, by a little: only components whose gradient is near eps move differently."""
    torch.manual_seed(0)
    nets = [OutputDiscriminator(19, 16)]
    nets += [copy.deepcopy(nets[0]) for _ in range(2)]
    start = [p.detach().clone() for p in nets[0].parameters()]
    adam = dict(lr=1e-4, betas=(0.9, 0.99))
    runs = [(nets[0], 1.0, 2e-8),   # ours
            (nets[1], 0.5, 1e-8),   # official: halved, eps 1e-8
            (nets[2], 0.5, 2e-8)]   # official loss with our eps
    opts = [torch.optim.Adam(net.parameters(), eps=eps, **adam) for net, _, eps in runs]
    for step in range(5):
        xs, xt = (torch.softmax(3 * torch.randn(1, 19, 64, 64, generator=gen(10 * step + k)), 1)
                  for k in (0, 1))
        for (net, factor, _), opt in zip(runs, opts):
            opt.zero_grad()
            (factor * discriminator_loss(net(xs), net(xt), "vanilla")).backward()
            opt.step()

    def gap(a, b):
        return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))

    moved = max((p - s).abs().max().item() for p, s in zip(nets[0].parameters(), start))
    assert moved > 2e-4                              # five steps of ~lr each
    assert gap(nets[0], nets[1]) == 0.0              # the identity, exactly
    assert 1e-3 * moved < gap(nets[0], nets[2]) < 0.1 * moved  # eps alone: a small difference


# ---------------------------------------------------------------- schedules (lr_poly of all three)

def official_lr_poly(base_lr, i_iter, max_iter, power):
    return base_lr * ((1 - float(i_iter) / max_iter) ** power)


def test_poly_over_a_horizon_beyond_the_stop_is_the_official_schedule():
    module = OutputSpaceAdversarial(SmallSegNet(num_classes=19, width=8), CLASS_NAMES, d_lr=1e-4,
                                    max_steps=120000, optim=OptimConfig(poly_horizon=250000))
    (seg, dis), (s_seg, s_dis) = module.configure_optimizers()
    for it in (0, 1, 1000, 119999):
        assert seg.param_groups[0]["initial_lr"] * s_seg.lr_lambdas[0](it) == pytest.approx(
            official_lr_poly(2.5e-4, it, 250000, 0.9), rel=1e-12)
        assert dis.param_groups[0]["initial_lr"] * s_dis.lr_lambdas[0](it) == pytest.approx(
            official_lr_poly(1e-4, it, 250000, 0.9), rel=1e-12)
    # without a horizon the decay reaches 0 at max_steps
    plain = OutputSpaceAdversarial(SmallSegNet(num_classes=19, width=8), CLASS_NAMES,
                                   max_steps=120000)
    assert plain.configure_optimizers()[1][0].lr_lambdas[0](119999) == pytest.approx(
        (1 / 120000) ** 0.9)


# ---------------------------------------------------------------- ClassMix (DACS transformmasks/transformsgpu)

def dacs_generate_class_mask(pred, classes):
    """DACS's generate_class_mask: 1 where pred is one of `classes`."""
    pred, classes = torch.broadcast_tensors(pred.unsqueeze(0), classes.unsqueeze(1).unsqueeze(2))
    return pred.eq(classes).sum(0)


def dacs_one_mix(mask, a, b):
    """DACS's oneMix on one (first, second) pair."""
    stacked, _ = torch.broadcast_tensors(mask, a)
    return stacked * a + (1 - stacked) * b


def seg_batch(seed, b=4, h=12, w=10, classes=6):
    g = gen(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    y = torch.randint(0, classes, (b, h, w), generator=g)
    y[torch.rand(b, h, w, generator=g) < 0.1] = 255
    return x, y


def test_classmix_is_dacs_mixing_of_image_label_and_weight():
    x_s, y_s = seg_batch(0)
    x_t, _ = seg_batch(1)
    y_t = torch.randint(0, 6, y_s.shape, generator=gen(2))   # pseudo-labels: never 255
    w_batch = 0.375
    x, y, w = classmix(x_s, y_s, x_t, y_t, gen(7), weight_tgt=torch.full((4,), w_batch))
    m = class_mix_mask(y_s, gen(7))  # the same draw
    for i in range(4):
        chosen = torch.unique(y_s[i][m[i]])
        present = torch.unique(y_s[i])
        n = int((present != 255).sum())
        # DACS draws int((n + n % 2) / 2) classes; here n counts the labelled classes only (DACS
        # counts 255 as a class and may paste ignore pixels: README, Baselines)
        assert chosen.numel() == int((n + n % 2) / 2) and not (chosen == 255).any()
        mask = dacs_generate_class_mask(y_s[i], chosen)
        assert torch.equal(x[i], dacs_one_mix(mask, x_s[i], x_t[i]))
        assert torch.equal(y[i], dacs_one_mix(mask, y_s[i], y_t[i]))
        assert torch.equal(w[i], dacs_one_mix(mask, torch.ones(y_s.shape[1:]),
                                              torch.full(y_s.shape[1:], w_batch)))


# ---------------------------------------------------------------- pseudo-label weights (DACS, DAFormer)

def dacs_threshold_uniform(logits, threshold=0.968):
    """DACS pixel_weight 'threshold_uniform' (= DAFormer's pseudo_weight): the batch's fraction of
    pixels whose max softmax probability is >= threshold, one value for every pixel."""
    max_probs, targets = torch.max(torch.softmax(logits, dim=1), dim=1)
    weight = torch.sum(max_probs.ge(threshold).long() == 1).item() / targets.numel()
    return targets, weight


def teacher_logits_batch(seed=5, b=3, c=5, h=8, w=10):
    lg = 4 * torch.randn(b, c, h, w, generator=gen(seed))
    lg[0] *= 3  # a confident image beside less confident ones: per-image fractions differ
    return lg


def test_pseudo_label_batch_weight_is_dacs_threshold_uniform():
    logits = teacher_logits_batch()
    targets, w_ref = dacs_threshold_uniform(logits)
    labels, w = pseudo_label(logits, 0.968, per_image=False)
    assert torch.equal(labels, targets)
    assert torch.allclose(w, torch.full((3,), w_ref))
    # ours by default: one fraction per image (their mean is the batch value)
    _, w_img = pseudo_label(logits, 0.968, per_image=True)
    assert len(set(w_img.tolist())) > 1 and w_img.mean().item() == pytest.approx(w_ref)


@pytest.mark.parametrize("per_image", [False, True])
def test_self_training_mix_targets_weights_and_loss_are_dacs(per_image):
    """Self-training's mix with pseudo_weight=batch gives DACS's mixed targets and
    pixelWiseWeight; our weighted CE equals DACS's mean(CE * weight) over all pixels (no ignore
    pixel is pasted)."""
    x_s, y_s = seg_batch(3, b=3, h=8, w=10, classes=5)
    x_t = torch.rand(3, 3, 8, 10, generator=gen(4))
    logits = teacher_logits_batch()
    module = SelfTraining(DropoutNet(), ["a", "b", "c", "d", "e"], per_image=per_image)
    module.teacher.net = Fixed(logits)
    mixed = module.mixed_batch({"source": {"image": x_s, "mask": y_s}, "target": {"image": x_t},
                                "seed": 11})
    m = class_mix_mask(y_s, gen(11)).long()  # the recipe's generator, seeded with batch["seed"]
    targets, w_ref = dacs_threshold_uniform(logits)
    w_t = pseudo_label(logits, 0.968, per_image=True)[1].view(-1, 1, 1) if per_image else w_ref
    weight = m * 1.0 + (1 - m) * (torch.ones_like(y_s) * w_t)
    assert torch.equal(mixed["mask"], m * y_s + (1 - m) * targets)
    torch.testing.assert_close(mixed["weight"], weight.float())
    student = torch.randn(3, 5, 8, 10, generator=gen(6))
    dacs_loss = torch.mean(F.cross_entropy(student, mixed["mask"], ignore_index=255,
                                           reduction="none") * weight)
    torch.testing.assert_close(segmentation_ce(student, mixed["mask"], pixel_weight=mixed["weight"]),
                               dacs_loss.float())


# ---------------------------------------------------------------- mean teacher (DACS, DAFormer)

class Fixed(nn.Module):
    """Returns the same logits whatever the input (a stand-in teacher)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Dropout(0.5), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))

    def forward(self, x):
        return self.net(x)


def test_teacher_forward_uses_batch_statistics_without_dropout():
    """DACS (ema_model.train()) and DAFormer (teacher in training mode, dropout / drop-path off)
    normalise the teacher's BatchNorm with the target batch's statistics."""
    student = DropoutNet().train()
    teacher = EMATeacher(student)
    student.net[4].eval()  # a BN kept frozen in the student stays frozen in the teacher
    x = 3 * torch.randn(2, 3, 6, 8, generator=gen(8)) + 1
    ref = copy.deepcopy(teacher.net).train()
    ref.net[3].eval()   # dropout off
    ref.net[4].eval()
    expected = ref(x)
    got = teacher(x, student)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, copy.deepcopy(teacher.net).eval()(x), atol=1e-3)
    modes = [m.training for m in teacher.net.net]
    assert modes == [True, True, True, False, False, True]


class Record(pl.Callback):
    """Student and teacher parameters at the start and after each iteration (after the EMA)."""

    def on_train_start(self, trainer, pl_module):
        self.student = [{n: p.detach().clone() for n, p in pl_module.segmenter.named_parameters()}]
        self.teacher = [{n: p.detach().clone() for n, p in pl_module.teacher.net.named_parameters()}]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.student.append({n: p.detach().clone() for n, p in pl_module.segmenter.named_parameters()})
        self.teacher.append({n: p.detach().clone() for n, p in pl_module.teacher.net.named_parameters()})


def test_ema_teacher_follows_daformer_over_parameters_only(toy_root, tmp_path):
    """DAFormer: teacher_0 = student_0; before iteration j >= 1, teacher <- a_j teacher +
    (1 - a_j) student_j with a_j = min(1 - 1 / (j + 1), 0.99) (student_j: after j steps);
    parameters only. DACS's update after step k uses a = min(1 - 1 / (k + 1), 0.99), one
    iteration earlier in the warm-up (its first teacher is the student after one step)."""
    cfg = shrunk_config(toy_root, tmp_path, "self_training", "method.self_training.ema=0.6",
                        "trainer.max_steps=3")
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    rec = Record()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         limit_val_batches=0, use_distributed_sampler=False,
                         callbacks=[rec])
    trainer.fit(module, datamodule=dm)
    teacher = dict(rec.student[0])
    for n in teacher:
        assert torch.equal(rec.teacher[0][n], teacher[n])
    for j in (1, 2, 3):
        a = min(1 - 1 / (j + 1), 0.6)  # the cap (0.99 in DACS/DAFormer) reached at j = 2 here
        teacher = {n: a * teacher[n] + (1 - a) * rec.student[j][n] for n in teacher}
        for n in teacher:
            torch.testing.assert_close(rec.teacher[j][n], teacher[n])
    conv = next(n for n in teacher if n.endswith("weight") and rec.student[1][n].dim() == 4)
    assert not torch.allclose(rec.teacher[1][conv], rec.student[1][conv])  # DACS: equal here
    # buffers are the teacher's own: running statistics of its (training-mode) target forwards
    s_bn, t_bn = dict(module.segmenter.named_buffers()), dict(module.teacher.net.named_buffers())
    means = [n for n in s_bn if n.endswith("running_mean")]
    assert means and all(not torch.equal(s_bn[n], t_bn[n]) for n in means)
    assert all(t_bn[n].abs().sum() > 0 for n in means)


# ---------------------------------------------------------------- rare-class sampling (DAFormer)

def daformer_rcs_probs(sample_class_stats, temperature):
    """DAFormer's get_rcs_class_probs on its sample_class_stats (per file: class -> pixels, n > 0)."""
    overall = {}
    for s in sample_class_stats:
        for c, n in s.items():
            overall[c] = overall.get(c, 0) + n
    overall = dict(sorted(overall.items(), key=lambda item: item[1]))
    freq = torch.tensor(list(overall.values()))
    freq = freq / torch.sum(freq)
    freq = 1 - freq
    freq = torch.softmax(freq / temperature, dim=-1)
    return list(overall.keys()), freq.numpy()


def test_rare_class_probabilities_and_pools_are_daformers():
    g = gen(12)
    counts = torch.randint(0, 200000, (40, 19), generator=g)
    counts[torch.rand(40, 19, generator=g) < 0.5] = 0
    counts[:, 17] = 0
    counts[3, 17] = 4000     # a rare class in one image
    counts[:, 18] = 0        # a class that never occurs
    stats = [{c: int(n) for c, n in enumerate(row) if n > 0} for row in counts]
    classes, ref = daformer_rcs_probs(stats, temperature=0.01)
    ours = rare_class_probabilities(counts, temperature=0.01)
    for c, p in zip(classes, ref):
        assert ours[c].item() == pytest.approx(float(p), abs=1e-6)
    assert ours[18].item() == 0.0 and 18 not in classes
    # DAFormer's samples_with_class: the files with more than min_pixels pixels of the class
    sampler = RareClassSampler(counts, temperature=0.01, min_pixels=3000)
    for c in classes:
        pool = [i for i, s in enumerate(stats) if s.get(c, 0) > 3000]
        assert sampler.images_of_class[c].tolist() == pool


# ---------------------------------------------------------------- DACS strong augmentation

@pytest.mark.parametrize("n", [64, 100, 128, 512, 1024, 2048])
def test_blur_kernel_is_dacs(n):
    """DACS transformsgpu.gaussian_blur: int(floor(ceil(0.1 n) - 0.5 + ceil(0.1 n) % 2))."""
    k = math.ceil(0.1 * n)
    assert blur_kernel_size(n) == int(math.floor(k - 0.5 + k % 2))


def test_strong_transform_draws_once_per_batch_and_keeps_range():
    x = torch.rand(3, 3, 16, 20, generator=gen(1))
    assert torch.equal(strong_transform(x, gen(2), jitter_p=0.0, blur_p=0.0), x)
    a = strong_transform(x, gen(3), jitter_p=1.0, blur_p=0.0)
    assert torch.equal(a, strong_transform(x, gen(3), jitter_p=1.0, blur_p=0.0))  # seeded
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x, atol=1e-3)
    # per-image factors: the same image twice in a batch is jittered differently
    twice = strong_transform(x[:1].repeat(2, 1, 1, 1), gen(4), jitter_p=1.0, blur_p=0.0)
    assert not torch.allclose(twice[0], twice[1], atol=1e-3)
    # blur alone (draws: jitter, blur, sigma): a Gaussian of the drawn sigma, kernel from the size
    g = gen(5)
    _, _, u = torch.rand(3, generator=gen(5)).tolist()
    blurred = strong_transform(x, g, jitter_p=0.0, blur_p=1.0)
    k = blur_kernel_size(16), blur_kernel_size(20)
    ref = torchvision.transforms.v2.functional.gaussian_blur(x, [k[1], k[0]], [0.15 + u] * 2)
    torch.testing.assert_close(blurred, ref)
    # strength 0: colour untouched
    torch.testing.assert_close(colour_jitter(x, 0.0, gen(6)), x, atol=1e-6, rtol=0)
