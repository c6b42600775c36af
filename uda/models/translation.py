"""DRANet-style image translator: encoder, separator, generator, patch discriminator, CADT.

DRANet (Lee, Cho, Im, CVPR 2021) encodes an image to features F with a shared encoder, splits F
into a content part and a style part with domain-specific weights, and decodes content + style
back to an image; swapping styles translates between domains. Content-adaptive domain transfer
(CADT) gives every source image its own target style, an attention-weighted mix over the target
batch.

Image convention for every network here: images in [-1, 1] (the generator ends with tanh).
All modules are fully convolutional with no size-dependent parameters, so one set of weights
trains on crops and translates full frames (any H, W divisible by 2**num_down).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm


class BatchInstanceNorm2d(nn.Module):
    """Batch-Instance Normalization (Nam & Kim, NeurIPS 2018).

    y = weight * (rho * BN(x) + (1 - rho) * IN(x)) + bias, with one gate rho per channel in
    [0, 1]: rho = 1 is BatchNorm, rho = 0 is InstanceNorm (both without their own affine; the
    affine is shared and applied after mixing). BN keeps running statistics (used in eval mode);
    IN always uses the statistics of each instance. rho starts at 1 (plain BN), as in the paper.

    The paper clips rho to [0, 1] after each optimizer step. A module cannot hook the optimizer,
    and clamping the parameter in place inside forward breaks autograd when the module runs
    several times before one backward (DRANet decodes several content/style mixes per step), so
    the forward clamps the *value* and lets the gradient pass straight through: rho never acts
    outside [0, 1], and a gradient pointing back into the range moves it back.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.eps = eps
        self.rho = nn.Parameter(torch.ones(num_features))
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def gate(self) -> torch.Tensor:
        """rho clamped to [0, 1] in value, identity in gradient (straight-through)."""
        return self.rho + (self.rho.clamp(0.0, 1.0) - self.rho).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rho = self.gate().view(1, -1, 1, 1)
        x_in = F.instance_norm(x, eps=self.eps)
        y = rho * self.bn(x) + (1.0 - rho) * x_in
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def make_norm(kind: str, channels: int) -> nn.Module:
    """"batch" | "instance" (affine, no running stats) | "bin" (BatchInstanceNorm2d) | "none"."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "bin":
        return BatchInstanceNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'batch', 'instance', 'bin' or 'none'")


def conv_norm_relu(cin: int, cout: int, norm: str, stride: int = 1) -> nn.Sequential:
    # A conv followed by a normalisation needs no bias (the norm's shift replaces it).
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=norm == "none"),
                         make_norm(norm, cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """x + conv-norm-relu-conv-norm(x); shape preserving."""

    def __init__(self, channels: int, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(conv_norm_relu(channels, channels, norm),
                                  nn.Conv2d(channels, channels, 3, 1, 1, bias=norm == "none"),
                                  make_norm(norm, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) in [-1, 1] -> features F (B, C_f, H/2^num_down, W/2^num_down).

    A 4x4 stride-2 stem (in_channels -> width), num_down - 1 further stride-2 convs doubling the
    channels, num_res residual blocks, and a 3x3 conv doubling the channels once more (ReLU, no
    norm), so C_f = width * 2**num_down (attribute `out_channels`). Nothing runs at full
    resolution but the stem's input (the official DRANet encoder has the same shape at
    num_down=1: 32 channels at 1/2, then 64). H and W must be divisible by 2**num_down
    (ValueError otherwise): the generator must return an image aligned pixel for pixel with the
    input, which silent padding would break for the caller.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, num_down: int = 1,
                 norm: str = "batch", num_res: int = 2):
        super().__init__()
        if num_down < 1:
            raise ValueError(f"num_down must be >= 1, got {num_down}")
        self.factor = 2 ** num_down
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1, bias=norm == "none"),
                                   make_norm(norm, width), nn.ReLU(inplace=True)]
        c = width
        for _ in range(num_down - 1):
            layers.append(conv_norm_relu(c, 2 * c, norm, stride=2))
            c *= 2
        layers += [ResidualBlock(c, norm) for _ in range(num_res)]
        layers += [nn.Conv2d(c, 2 * c, 3, 1, 1), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.out_channels = 2 * c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"Encoder input {h}x{w} is not divisible by {self.factor} "
                             f"(2**num_down); crop or pad the image first")
        return self.net(x)


class Separator(nn.Module):
    """Split features into content and style with domain-specific gates.

    forward(feat (B, C, h, w), domain: str) -> (content, style), both (B, C, h, w), with
    content = sigmoid(w_domain) * S(feat) and style = feat - content, so content + style equals
    feat (up to float rounding). S is conv-ReLU-conv without normalisation (as the official
    separator), shared by the domains, so the split of an image never depends on the rest of
    its batch. `split(feat, domains)` does the same for a batch whose images come from
    several domains (S runs once; each image gets its own domain's gate).

    The domain weights w_domain have shape (1, C, 1, 1): one gate per channel, no spatial dims.
    The official DRANet weight is per pixel, (1, C, h, w), which ties the model to one input size;
    here the translator trains on crops and translates full frames, so the weight must not depend
    on resolution. The sigmoid bounds the content share to (0, 1) of S(feat) (it starts at 0.5).
    An unknown domain raises KeyError naming the allowed ones.
    """

    def __init__(self, channels: int, domains: Sequence[str] = ("source", "target")):
        super().__init__()
        self.domains = tuple(domains)
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains must be distinct and non-empty, got {self.domains}")
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, 1, 1))
        self.weights = nn.ParameterDict(
            {d: nn.Parameter(torch.zeros(1, channels, 1, 1)) for d in self.domains})

    def gate(self, domain: str) -> torch.Tensor:
        if domain not in self.domains:
            raise KeyError(f"unknown domain {domain!r}; allowed: {list(self.domains)}")
        return torch.sigmoid(self.weights[domain])

    def forward(self, feat: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        content = self.gate(domain) * self.body(feat)
        return content, feat - content

    def split(self, feat: torch.Tensor, domains: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """feat (B, C, h, w) with one domain name per image -> (content, style)."""
        if len(domains) != feat.shape[0]:
            raise ValueError(f"{len(domains)} domain names for a batch of {feat.shape[0]}")
        gates = torch.cat([self.gate(d) for d in domains])
        content = gates * self.body(feat)
        return content, feat - content


class StyleModulation(nn.Module):
    """x * (1 + gamma(s)) + beta(s) per channel from a style code s (B, S); starts as the
    identity (zero-initialised), so training begins from the plain decoder."""

    def __init__(self, style_dim: int, channels: int):
        super().__init__()
        self.affine = nn.Linear(style_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(style).chunk(2, dim=1)
        return x * (1 + gamma[..., None, None]) + beta[..., None, None]


def _modulated_in(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                  eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm then x * (1 + gamma) + beta as ONE per-(image, channel) affine of x: autograd
    keeps x and the (B, C) statistics, not the normalised map as well (AdaIN in fused form)."""
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    scale = (1 + gamma[..., None, None]) * torch.rsqrt(var + eps)
    return x * scale + (beta[..., None, None] - mean * scale)


class _ModulatedConv(nn.Module):
    """conv -> instance norm -> style modulation (AdaIN) [-> ReLU]."""

    def __init__(self, cin: int, cout: int, style_dim: int, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.mod = StyleModulation(style_dim, cout)
        self.relu = relu

    def forward(self, x, style):
        gamma, beta = self.mod.affine(style).chunk(2, dim=1)
        x = _modulated_in(self.conv(x), gamma, beta)
        return torch.relu_(x) if self.relu else x


def no_autocast(x: torch.Tensor):
    """Autocast off on x's device: the generator and the colour transform compute in float32
    under mixed precision. In bf16 they round the image to about 3 significant digits (2^-8),
    the size of the L1 reconstruction residuals themselves, and the reconstruction gradient's
    signs flip (measured on the toy: cosine 0.91 to its float32 gradient, relative error 44 %;
    with the output layer alone in float32 0.96, with the whole generator 0.9995;
    scripts/bf16_gradients.py)."""
    return torch.autocast(x.device.type, enabled=False)


class Generator(nn.Module):
    """Style-modulated generator: every stage is instance-normalised and re-styled by the style
    code (AdaIN, as in MUNIT). forward(feat (B,C,h,w), style (B,S)) -> (B, out_channels,
    h*2^num_up, w*2^num_up) in [-1, 1].

    A modulated conv C -> C/2, num_res modulated residual blocks at C/2, num_up - 1 stages of
    nearest upsampling + modulated conv halving the channels, and a sub-pixel output (a 3x3 conv
    to out_channels * 4 and PixelShuffle(2), initialised so the four sub-pixels agree: no
    checkerboard at the start). Nothing is computed at full resolution but the output.

    No batch statistics anywhere: a translation never depends on the rest of the batch, train
    and eval mode give the same image, and a style code shared by the whole batch (CADT over a
    target batch gives nearly that) still reaches every stage. BatchNorm in a generator removes
    exactly such a batch-constant per-channel code in training mode.
    """

    def __init__(self, channels: int, style_dim: int, out_channels: int = 3, num_up: int = 1,
                 num_res: int = 2):
        super().__init__()
        if num_up < 1 or channels % (2 ** num_up):
            raise ValueError(f"channels={channels} is not divisible by 2**num_up={2 ** num_up}")
        c = channels // 2
        self.inp = _ModulatedConv(channels, c, style_dim)
        self.res = nn.ModuleList(
            nn.ModuleList([_ModulatedConv(c, c, style_dim),
                           _ModulatedConv(c, c, style_dim, relu=False)])
            for _ in range(num_res))
        self.up = nn.ModuleList()
        for _ in range(num_up - 1):
            self.up.append(_ModulatedConv(c, c // 2, style_dim))
            c //= 2
        self.out = nn.Conv2d(c, out_channels * 4, 3, 1, 1)
        with torch.no_grad():  # ICNR: the 4 sub-pixels of each output channel start identical
            self.out.weight.copy_(self.out.weight[::4].repeat_interleave(4, dim=0))
            self.out.bias.copy_(self.out.bias[::4].repeat_interleave(4))

    def forward(self, feat: torch.Tensor, style: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """logits: return the output before the tanh."""
        with no_autocast(feat):  # the whole generator in float32 (see no_autocast)
            feat, style = feat.float(), style.float()
            x = self.inp(feat, style)
            for a, b in self.res:
                x = x + b(a(x, style), style)
            for stage in self.up:
                x = stage(F.interpolate(x, scale_factor=2, mode="nearest"), style)
            out = F.pixel_shuffle(self.out(x), 2)
        return out if logits else torch.tanh(out)


def fit_colour_map(mean_from: torch.Tensor, mean_to: torch.Tensor,
                   ridge: float = 1e-3) -> torch.Tensor:
    """The affine colour map (3,4) = [M | b] with the least squared error of M @ mean_from + b
    against mean_to over positions ((3,h,w) thumbnails), ridge-regularised towards the identity
    (ridge x the mean squared colour of mean_from): closed form."""
    x = torch.cat([mean_from.flatten(1).T, mean_from.new_ones(mean_from[0].numel(), 1)], 1)
    y = mean_to.flatten(1).T
    d = torch.diag(x.new_tensor([1.0, 1.0, 1.0, 0.0]))
    lam = ridge * x.shape[0] * float(x[:, :3].pow(2).mean()) + 1e-8
    w0 = torch.cat([torch.eye(3, dtype=x.dtype, device=x.device), x.new_zeros(1, 3)])
    w = torch.linalg.solve(x.T @ x + lam * d, x.T @ y + lam * d @ w0)  # (4, 3)
    return w.T


class ColourTransform(nn.Module):
    """A global affine colour map per image, in two parts:

    * the domain map: the affine map (closed form, `fit_colour_map`) that takes the source
      domain's mean thumbnail (8x16 mean colours by position over whole training frames, set
      by `fit` before training; crops would blur the positions) to the target's, and its twin
      target -> source. Both domains share their layouts in
      distribution (sky above, road below) and a linear map commutes with the mean, so the true
      global colour shift fits these means position by position (toy family: the hue rotation
      recovered within 3 degrees). Gradients do not reach it; before any update it is the
      identity;
    * a per-image refinement (I + N(s_to) - N(s_from)) x + n(s_to) - n(s_from) from the two
      style codes (a small zero-initialised MLP): equal codes give the identity.

    One matrix per image for every pixel, so a translation cannot reassign colours class by
    class (a conv generator can, and under a large hue rotation the adversarial loss alone does
    not say which assignment is right; learning the rotation by gradient descent from the
    identity took more steps than the toy run has)."""

    ROUTES = {("source", "target"): 0, ("target", "source"): 1}

    def __init__(self, style_dim: int, hidden: int = 64, thumbnail: tuple[int, int] = (8, 16)):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(style_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 12))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.thumbnail = tuple(thumbnail)
        self.register_buffer("means", torch.zeros(2, 3, *thumbnail))  # source, target
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # frames averaged
        eye = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)
        self.register_buffer("maps", eye.repeat(2, 1, 1))  # source->target, target->source

    @torch.no_grad()
    def fit(self, mean_source: torch.Tensor, mean_target: torch.Tensor, frames: int) -> None:
        """Set the mean thumbnails ((3, *thumbnail) each, images in [-1, 1]) of the two
        domains' training frames (`frames`: how many were averaged, kept in `seen`) and fit
        the domain maps to them."""
        self.means.copy_(torch.stack([mean_source, mean_target]).to(self.means))
        self.seen.fill_(int(frames))
        self.maps[0] = fit_colour_map(self.means[0], self.means[1])
        self.maps[1] = fit_colour_map(self.means[1], self.means[0])

    def domain_map(self, route: tuple[str, str], weight: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M (3,3) or (B,3,3), b) of the domain map along `route`; `weight` (B,) moves it
        part of the way from the identity (I + w (M - I), w b); a route within one domain is
        the identity."""
        eye = torch.eye(3, device=self.maps.device)
        if route[0] == route[1]:
            return eye, torch.zeros(3, device=eye.device)
        if tuple(route) not in self.ROUTES:
            raise ValueError(f"unknown colour route {route!r}; expected one of {list(self.ROUTES)}")
        mb = self.maps[self.ROUTES[tuple(route)]].float()
        m, b = mb[:, :3], mb[:, 3]
        if weight is not None:
            w = weight.float().view(-1, 1, 1)
            return eye + w * (m - eye), w[:, :, 0] * b
        return m, b

    def matrix(self, style_from: torch.Tensor, style_to: torch.Tensor,
               route: tuple[str, str], weight: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M (B,3,3), b (B,3)) of the whole map x -> M x + b: domain map, then refinement."""
        m0, b0 = self.domain_map(route, weight)
        d = self.net(style_to.flatten(1).float()) - self.net(style_from.flatten(1).float())
        r = torch.eye(3, device=d.device) + d[:, :9].view(-1, 3, 3)
        m = r @ m0
        b = (r @ b0.expand(d.shape[0], 3).unsqueeze(-1)).squeeze(-1) + d[:, 9:]
        return m, b

    def forward(self, x: torch.Tensor, style_from: torch.Tensor, style_to: torch.Tensor,
                route: tuple[str, str], weight: torch.Tensor | None = None) -> torch.Tensor:
        with no_autocast(x):  # the image itself in float32 (see no_autocast)
            m, b = self.matrix(style_from, style_to, route, weight)
            out = torch.einsum("bij,bjhw->bihw", m.float(), x.float()) + b[:, :, None, None]
        return out.to(x.dtype)


class PatchDiscriminator(nn.Module):
    """PatchGAN: image (B, in_channels, H, W) -> real/fake logits (B, 1, h', w').

    num_layers stride-2 4x4 convs (channels width, 2w, 4w, ... capped at 8w), one stride-1 4x4
    conv, a stride-1 4x4 conv to one logit per patch; LeakyReLU(0.2). With spectral_norm every
    conv is spectrally normalised and no normalisation layer is used (SN already controls the
    Lipschitz constant; batch statistics would couple the real and fake batches); without it,
    InstanceNorm follows the inner convs. h' = H/2^num_layers - 2 for H divisible by 2^num_layers.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, num_layers: int = 3,
                 spectral_norm: bool = True):
        super().__init__()
        self.init_args = (in_channels, width, num_layers, spectral_norm)

        def conv(cin: int, cout: int, stride: int) -> nn.Module:
            c = nn.Conv2d(cin, cout, 4, stride, 1)
            return _spectral_norm(c) if spectral_norm else c

        def block(cin: int, cout: int, stride: int, first: bool) -> list[nn.Module]:
            norm = [] if spectral_norm or first else [nn.InstanceNorm2d(cout, affine=True)]
            return [conv(cin, cout, stride), *norm, nn.LeakyReLU(0.2, inplace=True)]

        layers = block(in_channels, width, 2, first=True)
        c = width
        for i in range(1, num_layers):
            nc = width * min(2 ** i, 8)
            layers += block(c, nc, 2, first=False)
            c = nc
        nc = width * min(2 ** num_layers, 8)
        layers += block(c, nc, 1, first=False)
        layers.append(conv(nc, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def __reduce__(self):
        """Pickled as (constructor arguments, state dict, mode): torch refuses to pickle the
        spectrally normalised convs themselves, and ddp_spawn sends the model to its processes
        by pickling."""
        return _rebuild_patch_discriminator, (self.init_args, self.state_dict(), self.training)


def _rebuild_patch_discriminator(init_args, state, training: bool) -> PatchDiscriminator:
    d = PatchDiscriminator(*init_args)
    d.load_state_dict(state)
    return d.train(training)


def cadt_attention(content_src: torch.Tensor, content_tgt: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """Content-adaptive attention of each source image over the target batch.

    content_src (B_s, C, h, w), content_tgt (B_t, C, h', w') (sizes may differ: features are
    globally average-pooled first). Returns (B_s, B_t), rows summing to 1: softmax over targets
    of cos(pool(src_i), pool(tgt_j)) / temperature, computed in float32. temperature -> 0: each
    source takes its most similar target (one-hot rows); temperature -> inf: uniform rows, i.e.
    the target-batch mean. Differentiable; detach the inputs to keep the attention out of the
    gradient.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if content_src.shape[1] != content_tgt.shape[1]:
        raise ValueError(f"channel mismatch: {content_src.shape[1]} vs {content_tgt.shape[1]}")
    s = F.normalize(content_src.float().mean(dim=(2, 3)), dim=1)
    t = F.normalize(content_tgt.float().mean(dim=(2, 3)), dim=1)
    return torch.softmax(s @ t.t() / temperature, dim=1)


def cadt_mix(attn: torch.Tensor, tensors_tgt: torch.Tensor) -> torch.Tensor:
    """Mix per-target tensors with attention rows: attn (B_s, B_t), tensors_tgt (B_t, ...) ->
    (B_s, ...), out[i] = sum_j attn[i, j] * tensors_tgt[j]. Works for styles (B_t, C, h, w) and
    Gram matrices (B_t, C, C) alike; the result has the dtype of tensors_tgt."""
    if attn.dim() != 2 or attn.shape[1] != tensors_tgt.shape[0]:
        raise ValueError(f"attention {tuple(attn.shape)} does not match target batch "
                         f"{tensors_tgt.shape[0]}")
    out = attn.to(tensors_tgt.dtype) @ tensors_tgt.reshape(tensors_tgt.shape[0], -1)
    return out.reshape(attn.shape[0], *tensors_tgt.shape[1:])
