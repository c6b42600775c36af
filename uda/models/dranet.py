"""DRANet translator: shared encoder E, separator S, generator G as one plain module.

Images are in [-1, 1]. `encode(x, domain) -> (content (B,C,h,w), style (B,C,1,1))`;
`decode(content, style) -> image`; `transfer(content_src, style_bank, attn)` decodes each source
content with its CADT-mixed style. H and W must be divisible by 2 ** num_down (`pad` makes
any frame so; crop the output back with [..., :H, :W]).

Style code: the separator splits F into content = w_d * S(F) and F - content; the style is the
spatial mean of F - content, a per-channel code. A spatial style map would carry the layout of
the image it came from into every translation (seen on the toy benchmark: translated frames
took the target frames' structure); a per-channel code carries none, fits any frame size
(crops train, full frames translate), and the reconstruction loss makes the content map hold
everything spatial.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from uda.models.translation import (ColourTransform, Encoder, Generator, Separator,
                                    cadt_attention, cadt_mix)


class DRANetTranslator(nn.Module):
    def __init__(self, width: int = 32, num_down: int = 1, num_res: int = 2,
                 enc_norm: str = "batch", domains: Sequence[str] = ("source", "target"),
                 checkpointing: bool = False, colour_transform: bool = False):
        """width: the encoder's first width (features have width * 2**num_down channels);
        num_down: stride-2 stages (features at 1/2**num_down); num_res: residual blocks in the
        encoder and in the generator; enc_norm: the encoder's normalisation (batch | bin |
        instance | none); checkpointing: encodes and decodes with gradients keep only their
        inputs and recompute the encoder / generator in backward (exact: see run_encoder);
        colour_transform: decode = a global affine colour map of the given image (ColourTransform:
        the domain map fitted to mean layouts, refined per image from the two style codes) plus
        the generator's one-channel output added to every channel in tanh-logit space (detail
        and shading; its last conv zero-initialised: the translator starts as the identity);
        decode then needs the image, its style code and the route."""
        super().__init__()
        self.checkpointing = checkpointing
        self.encoder = Encoder(3, width=width, num_down=num_down, norm=enc_norm, num_res=num_res)
        self.num_down = num_down  # inputs must be divisible by 2 ** num_down
        channels = self.encoder.out_channels
        self.separator = Separator(channels, domains)
        # with a colour transform the generator adds detail to the luminance only (one channel,
        # broadcast): colour is the global map's, so a local residual cannot re-assign it
        self.generator = Generator(channels, channels, 1 if colour_transform else 3,
                                   num_up=num_down, num_res=num_res)
        self.colour = ColourTransform(channels) if colour_transform else None
        if colour_transform:
            nn.init.zeros_(self.generator.out.weight)
            nn.init.zeros_(self.generator.out.bias)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad (B,C,H,W) at the bottom and right to multiples of 2 ** num_down."""
        m = 2 ** self.num_down
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")

    def encode(self, x: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_many([(x, domain)])[0]

    def encode_many(self, batches: Sequence[tuple[torch.Tensor, str]]
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(images, domain), ...] -> [(content, style), ...], encoded as ONE batch.

        Training encodes source and target together: the encoder's BatchNorm then normalises
        with statistics of both domains, as its running statistics (used in eval mode) do. Per
        domain batches would each be normalised to zero mean, removing in training exactly
        the per-domain style that the separator is to find, and train-mode translations would
        differ from eval-mode ones."""
        if len({x.shape[-2:] for x, _ in batches}) > 1:  # frames of different sizes cannot
            # share one tensor: encoded one by one (in eval mode this changes nothing)
            return [self.encode_many([pair])[0] for pair in batches]
        sizes = [x.shape[0] for x, _ in batches]
        domains = [d for (x, d) in batches for _ in range(x.shape[0])]
        feat = self.run_encoder(torch.cat([x for x, _ in batches]))
        content, rest = self.separator.split(feat, domains)
        styles = rest.mean(dim=(2, 3), keepdim=True)
        return list(zip(content.split(sizes), styles.split(sizes)))

    def run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder on x; with checkpointing (and gradients) only x is kept and backward
        recomputes the rest. Its BatchNorm uses the batch's statistics in training mode, so the
        recomputation is exact; it runs on copies of the buffers, so the running statistics
        move once per forward, as without checkpointing."""
        if not (self.checkpointing and torch.is_grad_enabled()):
            return self.encoder(x)
        calls = []

        def run(inp):
            calls.append(1)
            if len(calls) == 1:
                return self.encoder(inp)
            buffers = {n: b.clone() for n, b in self.encoder.named_buffers()}
            return torch.func.functional_call(self.encoder, buffers, (inp,))

        return checkpoint(run, x, use_reentrant=False)

    def decode(self, content: torch.Tensor, style: torch.Tensor,
               image: torch.Tensor | None = None, image_style: torch.Tensor | None = None,
               route: tuple[str, str] | None = None,
               route_weight: torch.Tensor | None = None) -> torch.Tensor:
        """content (B,C,h,w) + style (B,C,1,1), broadcast over the frame, the code also
        modulating every generator stage. With a colour transform: `image` (B,3,H,W), the
        frame `content` was encoded from (padded), `image_style`, its own style code, and
        `route`, (its domain, the style's domain); `route_weight` (B,) takes the domain colour
        map part of the way (style codes mixed between the domains)."""
        logits = self.colour is not None
        if logits and (image is None or image_style is None or route is None):
            raise ValueError("this DRANet translator has a colour transform "
                             "(method.dranet.colour_transform): decode needs the encoded image, "
                             "its style code and the route (decode(content, style, image, "
                             "image_style, route=(from_domain, to_domain)))")
        if self.checkpointing and torch.is_grad_enabled():
            g = checkpoint(self.generator, content + style, style.flatten(1), logits,
                           use_reentrant=False)
        else:
            g = self.generator(content + style, style.flatten(1), logits)
        if not logits:
            return g
        base = self.colour(image, image_style, style, route, route_weight)
        return torch.tanh(torch.atanh(base.clamp(-1 + 1e-3, 1 - 1e-3)) + g)

    @staticmethod
    def attention(content_src: torch.Tensor, content_bank: torch.Tensor,
                  temperature: float) -> torch.Tensor:
        """CADT attention (B_src, B_bank), rows sum to 1; contents are detached (the attention
        chooses styles, it is not trained through)."""
        return cadt_attention(content_src.detach(), content_bank.detach(), temperature)

    def transfer(self, content_src: torch.Tensor, style_bank: torch.Tensor,
                 attn: torch.Tensor, image: torch.Tensor | None = None,
                 image_style: torch.Tensor | None = None,
                 route: tuple[str, str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(translated images, the mixed style codes used (B_src,C,1,1)); `image`,
        `image_style`, `route`: the source frames, their own codes, (their domain, the bank's)
        (see decode)."""
        style = cadt_mix(attn, style_bank)
        return self.decode(content_src, style, image, image_style, route), style
