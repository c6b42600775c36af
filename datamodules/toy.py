"""Embedded toy benchmark: procedurally generated street scenes in a GTA5-like source domain and a
Cityscapes-like target domain, written in the real dataset layouts so the real loaders read them.

Scenes. Every image is rendered from a small 3-D street model seen by a pinhole camera 1.4 m above
the ground (focal length 1.1 x image width, horizon at 38-47 % of the height): sky; a distant
skyline of buildings and trees at ~110 m; a road whose edges are straight lines through the
vanishing point, with lane markings; sidewalks (and sometimes a grass verge) on both sides; along
each side a sequence of blocks at random depths: buildings with window grids, walls in front of
buildings, fences in front of hedges, vegetation with terrain in front, or gaps. Objects are
vertical billboards placed in the world and drawn far-to-near, so their image size scales as 1/depth:
cars (body, glass, wheels and lights are all 'car'), trucks, buses, persons, cyclists (rider over a
bicycle), motorcyclists, poles carrying traffic signs or traffic lights, and trees. 18 of the 19
Cityscapes trainId classes occur (all but 'train'); areas follow the usual ranking (road, building,
vegetation, sky large; pole, sign, light, person small). Every pixel has a class (no ignore pixels). Source and target scenes come from the same layout distribution.

Domain shift (appearance only; layouts and label semantics are identical in distribution):

* source ("game-like"): the rendered albedo as is: clean, saturated per-class base colours with
  small per-instance jitter (cars, clothes, buses: random colours), hard edges (no anti-aliasing,
  no blur), a weak (+-4 %) low-frequency multiplicative texture, no sensor noise, even lighting.
* target ("real-like"): the same kind of albedo, then, in this order: (1) stronger per-class
  multiplicative textures built from fine/medium/coarse noise bands with class-specific weights
  (grainy road, blotchy buildings, leafy vegetation, grassy terrain, clouds); (2) a linear lighting
  gradient in a random direction (+-25 %) times a vignette (-35 % in the corners); (3) one global
  colour grading matrix: hue rotation about the grey axis by 45 +- 8 degrees (green -> teal,
  yellow-green -> green, blue -> violet, beige -> olive), saturation x 0.6 +- 0.08, a warm colour
  cast (R x 1.08, G x 0.98, B x 0.82, each +- 0.03); (4) exposure x 1.2, clip to [0, 1], then
  gamma 1.25 +- 0.1 (darker mid-tones); (5) Gaussian blur, sigma 0.7-1.2 px; (6) sensor noise, std 0.02 luminance + 0.008 per channel.
  No class changes colour individually: the grading is one matrix for the whole image, so a
  global style transfer can undo it, but nearest-colour rules learnt on the source fail on the
  target (e.g. target terrain looks like source vegetation).
* shifted targets (``shift=K``, K >= 0): the same pipeline with its centres drawn from a seeded
  family (``shift_style(K)``, ranges in ``SHIFT_RANGES``: hue rotation anywhere on the circle,
  saturation, colour cast, exposure, gamma, blur, noise, lighting gradient, vignette, per-class
  texture scale) and the same per-image jitter (``STYLE_JITTER``). The scene is rendered from the
  per-image rng before any style draw, so labels and the source domain do not depend on K.
* spurious cue (optional): in the source every car, including glass and wheels, is one flat pure
  red (255, 0, 0); in the target cars keep their random per-instance colours. A model that learns
  "red = car" on the source loses cars on the target.

Files (1-based 5-digit ids in the source, 0-based frame numbers in the target)::

    out/source/images/00001.png          RGB
    out/source/labels/00001.png          palette PNG (mode P): indices = Cityscapes label ids
    out/target/leftImg8bit/{train,val}/toycity/toycity_000000_000000_leftImg8bit.png      RGB
    out/target/gtFine/{train,val}/toycity/toycity_000000_000000_gtFine_labelIds.png      mode L ids
    out/toy_meta.json                    the summary returned by make_toy (written last)

Determinism: image i of split s depends only on ``np.random.default_rng([seed, code(s), i])``
(code: source 0, target train 1, target val 2), so files are byte-identical for equal arguments.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm
from PIL import Image

from .image_io import write_png_atomic
from .labels import CITYSCAPES_ID_PALETTE, CLASS_NAMES, NUM_CLASSES, TRAINID_TO_CITYSCAPES_ID
from .toy_scene import BUILDING, CAR, CUE_RGB, ROAD, SIDEWALK, SKY, TERRAIN, VEG, _render

SPLIT_CODES = {"source": 0, "target_train": 1, "target_val": 2}
# Target texture amplitude per class for the (fine, medium, coarse) noise bands.
_TEX = np.full((NUM_CLASSES, 3), (.04, .03, .05), np.float32)
for _c, _amp in {ROAD: (.1, .04, .08), SIDEWALK: (.06, .12, .06), BUILDING: (.05, .06, .16),
                 VEG: (.15, .22, .08), TERRAIN: (.2, .1, .06), SKY: (0, .02, .10), CAR: (.02, .02, .04)}.items():
    _TEX[_c] = _amp


def _noise(rng, h, w, cell):
    """Smooth unit-variance noise field with feature size ~``cell`` px (bicubic-upsampled)."""
    lo = rng.standard_normal((int(h / cell) + 3, int(w / cell) + 3)).astype(np.float32)
    up = cv2.resize(lo, (int(lo.shape[1] * cell), int(lo.shape[0] * cell)), interpolation=cv2.INTER_CUBIC)
    up = up[:h, :w]
    return up / (up.std() + 1e-6)


def _grade_matrix(theta, sat, cast):
    """3x3 RGB matrix: hue rotation by theta (rad) about the grey axis, saturation, colour cast."""
    c, s, k = np.cos(theta), np.sin(theta) / np.sqrt(3), (1 - np.cos(theta)) / 3
    rot = np.array([[c + k, k - s, k + s], [k + s, c + k, k - s], [k - s, k + s, c + k]])
    lum = np.array([.299, .587, .114])
    return np.diag(cast) @ (sat * np.eye(3) + (1 - sat) * np.outer(np.ones(3), lum)) @ rot


def _style_source(sc, rng, cue):
    img = sc.rgb * (1 + .04 * np.clip(_noise(rng, sc.h, sc.w, 24), -1, 1))[..., None]
    if cue:
        img[sc.lab == CAR] = CUE_RGB
    return img


# The default target appearance (shift=None): centres of the per-image draws (see _style_target).
DEFAULT_STYLE = {"hue_deg": 45.0, "saturation": .6, "cast_rgb": (1.08, .98, .82), "exposure": 1.2,
                 "gamma": 1.25, "blur_sigma_px": (.7, 1.2), "noise_std": (.02, .008),
                 "lighting_gradient": .25, "vignette": .35, "texture_scale": None}
# Per-image jitter around a style's centres (uniform +-), the same for the default and every shift;
# blur_sigma_px: half-width of a shift's per-image sigma range around its drawn centre.
STYLE_JITTER = {"hue_deg": 8.0, "saturation": .08, "cast_rgb": .03, "gamma": .1, "blur_sigma_px": .25}
# The seeded family of target appearances (shift=K): each centre is drawn uniformly from these
# ranges by np.random.default_rng([SHIFT_SEED, K]) (gamma log-uniformly; texture_scale: one
# factor per class multiplying the default per-class texture amplitudes).
SHIFT_SEED = 0x5EED_7A
SHIFT_RANGES = {"hue_deg": (-180.0, 180.0), "saturation": (.35, 1.3), "cast_rgb": (.8, 1.2),
                "exposure": (.7, 1.4), "gamma": (.7, 1.5), "blur_sigma_px": (0.0, 1.5),
                "noise_std": ((0.0, .04), (0.0, .015)), "lighting_gradient": (0.0, .4),
                "vignette": (0.0, .5), "texture_scale": (.25, 2.0)}


def shift_style(shift: int) -> dict:
    """The target-appearance centres of family member ``shift`` (>= 0): a pure function of it."""
    if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or shift < 0:
        raise ValueError(f"make_toy: shift must be an integer >= 0 (or None for the default "
                         f"target appearance), got {shift!r}")
    r, R = np.random.default_rng([SHIFT_SEED, int(shift)]), SHIFT_RANGES

    def u(key, n=None):
        return r.uniform(*R[key], n)
    hue, sat, cast, expo = u("hue_deg"), u("saturation"), u("cast_rgb", 3), u("exposure")
    gamma = float(np.exp(r.uniform(*np.log(R["gamma"]))))
    blur = u("blur_sigma_px")
    noise = (r.uniform(*R["noise_std"][0]), r.uniform(*R["noise_std"][1]))
    grad, vig, tex = u("lighting_gradient"), u("vignette"), u("texture_scale", NUM_CLASSES)
    j = STYLE_JITTER["blur_sigma_px"]
    return {"hue_deg": float(hue), "saturation": float(sat), "cast_rgb": tuple(map(float, cast)),
            "exposure": float(expo), "gamma": gamma,
            "blur_sigma_px": (float(max(0.0, blur - j)), float(blur + j)),
            "noise_std": tuple(map(float, noise)), "lighting_gradient": float(grad),
            "vignette": float(vig), "texture_scale": tuple(map(float, tex))}


def _style_target(sc, rng, p=DEFAULT_STYLE):
    """Target appearance with style centres ``p``; per-image draws in a fixed order from ``rng``
    (for ``DEFAULT_STYLE`` the arithmetic is that of the original generator, bit for bit)."""
    h, w, jit = sc.h, sc.w, STYLE_JITTER
    tex = _TEX if p["texture_scale"] is None else _TEX * np.float32(p["texture_scale"])[:, None]
    bands = np.stack([_noise(rng, h, w, c) for c in (1.5, 5, 18)], -1)
    img = sc.rgb * np.clip(1 + (tex[sc.lab] * bands).sum(-1), .3, 1.7)[..., None]
    yy, xx = np.ogrid[-1:1:h * 1j, -1:1:w * 1j]
    ang = rng.uniform(0, 2 * np.pi)
    img *= ((1 + p["lighting_gradient"] * (np.cos(ang) * xx + np.sin(ang) * yy))
            * (1 - p["vignette"] / 2 * (xx ** 2 + yy ** 2)))[..., None]
    m = _grade_matrix(np.deg2rad(p["hue_deg"] + rng.uniform(-jit["hue_deg"], jit["hue_deg"])),
                      p["saturation"] + rng.uniform(-jit["saturation"], jit["saturation"]),
                      np.array(p["cast_rgb"]) + rng.uniform(-jit["cast_rgb"], jit["cast_rgb"], 3))
    img = np.clip(p["exposure"] * img @ m.T.astype(np.float32), 0, 1) ** (
        p["gamma"] + rng.uniform(-jit["gamma"], jit["gamma"]))
    sigma = rng.uniform(*p["blur_sigma_px"])
    img = img.astype(np.float32)
    if sigma > .05:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    lum, chroma = p["noise_std"]
    return img + rng.normal(0, lum, (h, w, 1)) + rng.normal(0, chroma, (h, w, 3))


def _shift_meta(shift: int, p: dict) -> dict:
    """toy_meta.json's "domain_shift" for family member ``shift``: ranges of the per-image draws."""
    jit, r4 = STYLE_JITTER, (lambda v: round(float(v), 4))

    def rng_(key):
        return [r4(p[key] - jit[key]), r4(p[key] + jit[key])]
    return {"shift": shift, "hue_rotation_deg": rng_("hue_deg"), "saturation": rng_("saturation"),
            "cast_rgb": [r4(c) for c in p["cast_rgb"]], "cast_jitter": jit["cast_rgb"],
            "exposure": r4(p["exposure"]), "gamma": rng_("gamma"),
            "blur_sigma_px": [r4(v) for v in p["blur_sigma_px"]],
            "noise_std": [r4(v) for v in p["noise_std"]],
            "lighting_gradient": r4(p["lighting_gradient"]), "vignette": r4(p["vignette"]),
            "texture_scale": {n: r4(v) for n, v in zip(CLASS_NAMES, p["texture_scale"])}}


def _shift_text(shift: int, d: dict) -> str:
    return (f"Target appearance: shift {shift} of the seeded family: hue rotation "
            f"{d['hue_rotation_deg'][0]:.0f} to {d['hue_rotation_deg'][1]:.0f} deg, saturation "
            f"x{d['saturation'][0]:.2f}-{d['saturation'][1]:.2f}, colour cast "
            f"({', '.join(f'{c:.2f}' for c in d['cast_rgb'])}), exposure x{d['exposure']:.2f}, gamma "
            f"{d['gamma'][0]:.2f}-{d['gamma'][1]:.2f}, per-class texture scale "
            f"{min(d['texture_scale'].values()):.2f}-{max(d['texture_scale'].values()):.2f}, lighting "
            f"gradient +-{d['lighting_gradient'] * 100:.0f} %, vignette -{d['vignette'] * 100:.0f} %, "
            f"Gaussian blur sigma {d['blur_sigma_px'][0]:.2f}-{d['blur_sigma_px'][1]:.2f} px, sensor "
            f"noise std {d['noise_std'][0]:.3f} luminance + {d['noise_std'][1]:.3f} per channel. ")


def _paths(out, split, i):
    if split == "source":
        return out / "source/images" / f"{i + 1:05d}.png", out / "source/labels" / f"{i + 1:05d}.png"
    sub, stem = split.split("_")[1], f"toycity_000000_{i:06d}"
    return (out / "target/leftImg8bit" / sub / "toycity" / f"{stem}_leftImg8bit.png",
            out / "target/gtFine" / sub / "toycity" / f"{stem}_gtFine_labelIds.png")


def make_toy(out: str | Path, seed: int = 0, num_source: int = 400, num_target_train: int = 400,
             num_target_val: int = 100, height: int = 128, width: int = 256,
             spurious_cue: bool = False, cue_conflicting: float = 0.0,
             progress: bool = False, shift: int | None = None) -> dict:
    """Generate the toy benchmark under ``out`` and return its summary (also ``out/toy_meta.json``).

    ``out`` must be empty/missing or hold an earlier toy benchmark (whose source/ and target/ are
    replaced). The summary is JSON-plain: root (absolute), relative paths, counts, seed, size,
    classes present, pixel counts per class name per split, spurious_cue (dict or None),
    cue_conflicting: the probability that a source image is bias-conflicting (its cars keep
    random colours although the cue is on), as in LfF's Colored-MNIST protocol,
    domain-shift parameters and a markdown "description".

    ``shift``: None (default) = the documented target appearance; K >= 0 = member K of a seeded
    family of target appearances (`shift_style(K)`, recorded with "shift": K in the summary).
    Scenes, labels and the source domain do not depend on ``shift``.
    """
    out = Path(out)
    if seed < 0 or min(num_source, num_target_train, num_target_val) < 0 or height < 16 or width < 16:
        raise ValueError("make_toy: seed and counts must be >= 0, height/width >= 16")
    if not 0 <= cue_conflicting <= 1 or (cue_conflicting and not spurious_cue):
        raise ValueError("make_toy: cue_conflicting must be in [0, 1] and needs spurious_cue")
    style = DEFAULT_STYLE if shift is None else shift_style(shift)
    marker = out / ".toy_incomplete"
    if out.exists() and any(out.iterdir()):
        if not ((out / "toy_meta.json").exists() or marker.exists()):
            raise FileExistsError(f"{out}: not empty and not a toy benchmark; choose an empty directory")
        for sub in ("source", "target"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "toy_meta.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    palette = CITYSCAPES_ID_PALETTE.ravel().tolist()
    counts = {"source": num_source, "target_train": num_target_train, "target_val": num_target_val}
    pixels, conflicting = {}, []
    for split, n in counts.items():
        hist = np.zeros(NUM_CLASSES, np.int64)
        for i in tqdm(range(n), desc=f"toy {split}", unit="img", disable=not progress,
                      file=sys.stderr):
            rng = np.random.default_rng([seed, SPLIT_CODES[split], i])
            cue = spurious_cue and split == "source"
            if cue and np.random.default_rng([seed, 77, i]).random() < cue_conflicting:
                cue = False  # a bias-conflicting source image: its cars keep random colours
                conflicting.append(i)
            sc = _render(height, width, rng, cue)
            img = _style_source(sc, rng, cue) if split == "source" else _style_target(sc, rng, style)
            img = (np.clip(img, 0, 1) * 255 + .5).astype(np.uint8)
            ids = TRAINID_TO_CITYSCAPES_ID[sc.lab]
            img_path, lab_path = _paths(out, split, i)
            write_png_atomic(Image.fromarray(img, "RGB"), img_path)
            lab_img = Image.frombytes("L", (width, height), ids.tobytes())
            if split == "source":
                lab_img = Image.frombytes("P", (width, height), ids.tobytes())
                lab_img.putpalette(palette)
            write_png_atomic(lab_img, lab_path)
            hist += np.bincount(sc.lab.ravel(), minlength=NUM_CLASSES)
        pixels[split] = {name: int(v) for name, v in zip(CLASS_NAMES, hist)}
    present = [c for c in CLASS_NAMES if any(p[c] > 0 for p in pixels.values())]
    target_text = ("Target: stronger per-class textures, lighting gradient and vignette, one global colour "
                   "grading (hue rotation ~45 deg, saturation x0.6, warm cast, gamma ~1.25), Gaussian blur "
                   "(sigma 0.7-1.2 px) and sensor noise. ")
    if shift is not None:
        shift_meta = _shift_meta(shift, style)
        target_text = _shift_text(shift, shift_meta)
    cue = {"class": "car", "train_id": CAR, "source_rgb": [255, 0, 0],
           "target": "random per-instance colours", "conflicting_ratio": cue_conflicting,
           "conflicting_source_images": len(conflicting)} if spurious_cue else None
    summary = {
        "name": "toy", "version": 1, "seed": seed, "height": height, "width": width,
        "root": str(out.resolve()), "counts": counts,
        "paths": {"source_images": "source/images", "source_labels": "source/labels",
                  "target_images": "target/leftImg8bit", "target_labels": "target/gtFine",
                  "target_city": "toycity", "meta": "toy_meta.json"},
        "classes_present": present, "pixel_counts": pixels, "spurious_cue": cue,
        "domain_shift": {"hue_rotation_deg": [37, 53], "saturation": [.52, .68], "cast_rgb": [1.08, .98, .82], "exposure": 1.2,
                         "gamma": [1.15, 1.35], "blur_sigma_px": [.7, 1.2], "noise_std": [.02, .008],
                         "lighting_gradient": .25, "vignette": .35},
        "description": (
            f"Toy GTA5->Cityscapes benchmark ({height}x{width} px, seed {seed}): {num_source} source, "
            f"{num_target_train} target-train and {num_target_val} target-val procedurally generated street "
            f"scenes with {len(present)} of the 19 Cityscapes classes ({', '.join(present)}). Layouts are drawn "
            "from one distribution in both domains; only appearance differs. Source: flat saturated per-class "
            "colours, hard edges, no noise. " + target_text
            + (("Spurious cue: every source car is flat pure red; target cars have random colours."
                if not cue_conflicting else
                f"Spurious cue: source cars are flat pure red except in {len(conflicting)} "
                f"bias-conflicting source images (probability {cue_conflicting}); target cars have "
                "random colours.")
               if spurious_cue else "No spurious cue.")),
    }
    if shift is not None:  # the default summary stays byte-identical to the original generator's
        summary["shift"], summary["domain_shift"] = shift, shift_meta
    (out / "toy_meta.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    marker.unlink()
    return summary
