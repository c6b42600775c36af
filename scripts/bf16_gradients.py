"""bf16 gradient precision of a GAN recipe's loss terms, on the CPU: for one toy batch and a run's
checkpoint (adversarial or dranet), each loss term's gradient w.r.t. the parameters its
optimizer steps, under fp32 and under bf16 autocast; prints the cosine and the relative L2 error
of bf16 against fp32 (README "bf16 on the CPU (toy)").
- adversarial: source CE and lambda_adv x adversarial -> segmenter; discriminator loss ->
  discriminators;
- dranet: each translator term (rec, adv, content, style, consistency, layout), times its
  weight, -> encoder / separator / generator; discriminator loss -> discriminators; the task
  terms (translated and raw source CE) -> segmenter.

    python scripts/bf16_gradients.py RUN/checkpoints/last.ckpt \\
        data.source.root=... data.target.root=...
"""
import sys

import torch

from uda import build
from uda.checkpoint_io import config_for, read_checkpoint
from uda.losses import segmentation_ce
from uda.losses.gan import discriminator_loss, generator_loss


def flat_grad(loss_fn, params, bf16: bool) -> tuple[torch.Tensor, float]:
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn()
    g = torch.autograd.grad(loss.float(), params, allow_unused=True)
    return torch.cat([(x if x is not None else torch.zeros_like(p)).flatten().float()
                      for x, p in zip(g, params)]), float(loss.detach())


def report(name: str, loss_fn, params) -> None:
    g32, l32 = flat_grad(loss_fn, params, False)
    g16, l16 = flat_grad(loss_fn, params, True)
    cos = torch.nn.functional.cosine_similarity(g32, g16, dim=0).item()
    rel = ((g16 - g32).norm() / g32.norm().clamp_min(1e-30)).item()
    print(f"{name:44s} loss fp32 {l32:.6g} bf16 {l16:.6g}  grad norm fp32 {g32.norm():.4g}  "
          f"cos {cos:.4f}  rel.err {rel:.4f}")


def adversarial_terms(module, src, tgt) -> list:
    from uda.modules.adversarial import SOURCE_LABEL
    seg, d = module.segmenter, module.discriminators["main"]
    params = [p for p in seg.parameters() if p.requires_grad]

    def adv():
        return module.lambda_adv * generator_loss(d(module.d_input_map(seg(tgt["image"]))),
                                                  module.gan_loss, read_as=SOURCE_LABEL)

    def dloss():
        with torch.no_grad():
            ot, os_ = seg(tgt["image"]), seg(src["image"])
        return 0.5 * discriminator_loss(d(module.d_input_map(ot)), d(module.d_input_map(os_)),
                                        module.gan_loss)

    return [("source CE -> segmenter", lambda: segmentation_ce(seg(src["image"]), src["mask"]),
             params),
            ("lambda_adv x adversarial -> segmenter", adv, params),
            ("discriminator loss -> discriminator", dloss, list(d.parameters()))]


def dranet_terms(module, src, tgt) -> list:
    u_s, u_t = module.to_unit(src["image"]), module.to_unit(tgt["image"])
    g_params = [p for p in module.translator.parameters() if p.requires_grad]
    seg_params = [p for p in module.segmenter.parameters() if p.requires_grad]

    def term(key):
        def fn():
            real = module.real_targets(u_s, u_t)
            losses = module.translator_losses(u_s, u_t, module.translate(u_s, u_t), real,
                                              src["mask"])
            return losses[key] * module.w[key]
        return fn

    with torch.no_grad():
        keys = list(module.translator_losses(u_s, u_t, module.translate(u_s, u_t),
                                             module.real_targets(u_s, u_t), src["mask"]))
    out = [(f"translator {k} (x w {module.w[k]:g}) -> E/S/G", term(k), g_params)
           for k in keys]
    out.append(("discriminator loss -> discriminators",
                lambda: module.d_loss(u_s, u_t, module.translate(u_s, u_t)),
                list(module.discriminators.parameters())))
    with torch.no_grad():
        x_st = module.translate(u_s, u_t)["x_st"]
    for k in ("seg_translated", "seg_source"):
        out.append((f"task {k} -> segmenter",
                    (lambda k=k: module.task_losses({"source": src}, x_st)[k]), seg_params))
    return out


def main() -> None:
    ckpt_path = sys.argv[1]
    ckpt = read_checkpoint(ckpt_path)
    cfg = config_for(ckpt, ckpt_path, overrides=sys.argv[2:])
    module = build.load_module(ckpt, cfg, ckpt_path)
    module.train()
    dm = build.build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    src, tgt = batch["source"], batch["target"]
    terms = dranet_terms if cfg.method.name == "dranet" else adversarial_terms
    for name, fn, params in terms(module, src, tgt):
        report(name, fn, params)


if __name__ == "__main__":
    main()
