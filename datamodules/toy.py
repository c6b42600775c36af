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

import colorsys
import json
import shutil
import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm
from PIL import Image

from .io import write_png_atomic
from .labels import CITYSCAPES_ID_PALETTE, CLASS_NAMES, NUM_CLASSES, TRAINID_TO_CITYSCAPES_ID

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR,
 TRUCK, BUS, TRAIN, MOTO, BIKE) = range(NUM_CLASSES)
SPLIT_CODES = {"source": 0, "target_train": 1, "target_val": 2}
CUE_RGB = (1.0, 0.0, 0.0)
_HC, _F, _ZFAR = 1.4, 1.1, 110.0  # camera height (m), focal length / width, skyline depth (m)
_BUILDING_COLS = [(.78, .66, .46), (.58, .58, .62), (.68, .42, .30), (.86, .84, .76), (.50, .42, .40)]
_COL = {ROAD: (.36, .36, .38), SIDEWALK: (.66, .54, .60), WALL: (.66, .62, .48), FENCE: (.52, .40, .24),
        POLE: (.48, .50, .54), VEG: (.22, .55, .14), TERRAIN: (.62, .70, .26), SKY: (.45, .68, .98)}
# Target texture amplitude per class for the (fine, medium, coarse) noise bands.
_TEX = np.full((NUM_CLASSES, 3), (.04, .03, .05), np.float32)
for _c, _amp in {ROAD: (.1, .04, .08), SIDEWALK: (.06, .12, .06), BUILDING: (.05, .06, .16),
                 VEG: (.15, .22, .08), TERRAIN: (.2, .1, .06), SKY: (0, .02, .10), CAR: (.02, .02, .04)}.items():
    _TEX[_c] = _amp


def _jit(rng, rgb, amt=0.06):
    """Per-instance colour jitter: brightness and per-channel offsets, clipped to [0, 1]."""
    return np.clip(np.asarray(rgb) * (1 + rng.uniform(-amt, amt)) + rng.uniform(-amt, amt, 3) / 2, 0, 1)


def _rand_col(rng, grey_p=0.3):
    """A random object colour: saturated random hue, or an achromatic one with prob. grey_p."""
    if rng.random() < grey_p:
        return np.full(3, rng.uniform(0.08, 0.9))
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(.45, .9), rng.uniform(.35, .9)))


class _Scene:
    """Painter's canvas: trainId map ``lab`` (HxW uint8) and albedo ``rgb`` (HxWx3 float in [0,1])."""

    def __init__(self, h, w, rng):
        self.h, self.w, self.f = h, w, _F * w
        self.yh, self.xv = h * rng.uniform(.38, .47), w * rng.uniform(.44, .56)
        self.lab = np.full((h, w), SKY, np.uint8)
        self.rgb = np.zeros((h, w, 3), np.float32)

    def paint(self, sl, mask, cls, rgb):
        """Set class and colour where ``mask`` (broadcast to the region ``sl``) is true."""
        lab, img = self.lab[sl], self.rgb[sl]
        mask = np.broadcast_to(mask, lab.shape)
        lab[mask] = cls
        img[mask] = rgb if np.ndim(rgb) == 1 else rgb[mask]

    def box(self, X, z, w, h, elev=0.0):
        """Project a vertical world rectangle (centre X, depth z, size w x h m, bottom at height elev).

        Returns (region, a, b) with a/b = metric coordinates of pixel centres from the left/top
        edge (broadcastable row/column vectors), or None when off-screen. At least 1 px is drawn.
        """
        s = self.f / z
        x0f, y1f = self.xv + (X - w / 2) * s, self.yh + (_HC - elev) * s
        y0f = y1f - h * s
        x0, y0 = int(round(x0f)), int(round(y0f))
        x1, y1 = max(x0 + 1, int(round(x0f + w * s))), max(y0 + 1, int(round(y1f)))
        cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, self.w), max(y0, 0), min(y1, self.h)
        if cx0 >= cx1 or cy0 >= cy1:
            return None
        a = np.clip((np.arange(cx0, cx1) + .5 - x0f) / s, 0, w)[None, :]
        b = np.clip((np.arange(cy0, cy1) + .5 - y0f) / s, 0, h)[:, None]
        return (slice(cy0, cy1), slice(cx0, cx1)), a, b

    def facade(self, side, X, z0, z1, height):
        """Vertical plane parallel to the road at lateral distance X on ``side`` (+1 right, -1 left),
        depths z0..z1, top at world height ``height(z)``. Returns (region, mask, z per column,
        world height per pixel) or None when off-screen."""
        lo, hi = sorted(self.xv + side * X * self.f / np.array([z1, z0]))
        c0, c1 = max(int(round(lo)), 0), min(int(round(hi)), self.w)
        if c0 >= c1:
            return None
        zc = np.clip(side * X * self.f / (np.arange(c0, c1) + .5 - self.xv + 1e-6 * side), z0, z1)
        s = self.f / zc
        yb, yt = self.yh + _HC * s, self.yh - (height(zc) - _HC) * s
        r0, r1 = max(int(yt.min()), 0), min(int(np.ceil(yb.max())), self.h)
        if r0 >= r1:
            return None
        rows = np.arange(r0, r1)[:, None] + .5
        return (slice(r0, r1), slice(c0, c1)), (rows >= yt) & (rows < yb), zc[None], _HC - (rows - self.yh) / s


def _seg(a, b, p, q, t):
    """Mask of points (a, b) within distance t of the segment p-q."""
    d = np.subtract(q, p)
    tt = np.clip(((a - p[0]) * d[0] + (b - p[1]) * d[1]) / (d @ d), 0, 1)
    return (a - p[0] - tt * d[0]) ** 2 + (b - p[1] - tt * d[1]) ** 2 < t * t


def _car(sc, rng, X, z, cue, front):
    w, h = rng.uniform(1.7, 1.95), rng.choice([1.5, 1.5, 1.9])
    r = sc.box(X, z, w, h)
    if r is None:
        return
    sl, a, b = r
    u, v = a / w, b / h
    taper = .12 * np.minimum(v / .45, 1)
    cabin, body = (v < .45) & (np.abs(u - .5) < .3 + taper), (v >= .42) & (v < .86)
    wheels = (v >= .84) & (((u > .06) & (u < .26)) | ((u > .74) & (u < .94)))
    if cue:
        return sc.paint(sl, cabin | body | wheels, CAR, np.array(CUE_RGB))
    col = _rand_col(rng)
    sc.paint(sl, cabin | body, CAR, col)
    sc.paint(sl, (v > .07) & (v < .4) & (np.abs(u - .5) < .24 + taper), CAR, _jit(rng, (.12, .15, .2)))
    sc.paint(sl, wheels, CAR, np.full(3, .06))
    lamp = (.95, .95, .8) if front else (.85, .1, .08)
    sc.paint(sl, (v > .5) & (v < .6) & ((u < .15) | (u > .85)), CAR, np.array(lamp))


def _big_vehicle(sc, rng, X, z, cls):
    w, h = 2.5, (rng.uniform(3.0, 3.8) if cls == TRUCK else 3.1)
    r = sc.box(X, z, w, h)
    if r is None:
        return
    sl, a, b = r
    u, v = a / w, b / h
    col = _jit(rng, (.9, .9, .88)) if cls == TRUCK and rng.random() < .5 else _rand_col(rng, 0.1)
    sc.paint(sl, v < .88, cls, col)
    sc.paint(sl, (v >= .8) & (v < .88), cls, col * .4)
    sc.paint(sl, (v >= .86) & (((u > .05) & (u < .3)) | ((u > .7) & (u < .95))), cls, np.full(3, .06))
    if cls == BUS:
        sc.paint(sl, (v > .1) & (v < .45) & (np.abs(u - .5) < .44), BUS, _jit(rng, (.1, .13, .16)))


def _person(sc, rng, X, z, cls=PERSON, h=None, elev=0.0):
    h = h or rng.uniform(1.6, 1.9)
    r = sc.box(X, z, .6, h, elev)
    if r is None:
        return
    sl, a, b = r
    ac, v = a - .3, b / h
    sc.paint(sl, (v >= .52) & ((np.abs(ac - .09) < .075) | (np.abs(ac + .09) < .075)), cls,
             _rand_col(rng, .6) * .6)
    sc.paint(sl, (v >= .12) & (v < .56) & ((np.abs(ac) < .2) | ((v < .5) & (np.abs(ac) < .27))), cls,
             _rand_col(rng, .4))
    sc.paint(sl, (ac / .1) ** 2 + ((v - .065) / .06) ** 2 < 1, cls, _jit(rng, (.85, .65, .5), .15))


def _two_wheeler(sc, rng, X, z, cls, with_rider):
    w, h = (1.7, 1.0) if cls == BIKE else (2.0, 1.15)
    r = sc.box(X, z, w, h)
    if r is None:
        return
    sl, a, b = r
    c1, c2, rad = (.38, h - .34), (w - .38, h - .34), .34
    d1, d2 = (a - c1[0]) ** 2 + (b - c1[1]) ** 2, (a - c2[0]) ** 2 + (b - c2[1]) ** 2
    col = _rand_col(rng, .2)
    if cls == BIKE:
        sc.paint(sl, ((d1 < rad ** 2) & (d1 > .24 ** 2)) | ((d2 < rad ** 2) & (d2 > .24 ** 2)), BIKE,
                 np.full(3, .08))
        frame = _seg(a, b, c1, (.8, c1[1]), .05) | _seg(a, b, (.8, c1[1]), (1.2, .35), .05)
        frame |= _seg(a, b, c1, (.65, .35), .05) | _seg(a, b, (.65, .35), (1.2, .35), .05)
        frame |= _seg(a, b, (1.2, .2), c2, .05) | _seg(a, b, (.55, .3), (.75, .3), .06)
        sc.paint(sl, frame, BIKE, col)
    else:
        sc.paint(sl, ((a - w / 2) / .75) ** 2 + ((b - .55) / .28) ** 2 < 1, MOTO, col)
        sc.paint(sl, (d1 < rad ** 2) | (d2 < rad ** 2), MOTO, np.full(3, .07))
    if with_rider:
        _person(sc, rng, X, z - .01, RIDER, 1.35, .45)


def _pole(sc, rng, X, z, kind, side):
    ph, pw = rng.uniform(4, 8), rng.uniform(.16, .26)
    r = sc.box(X, z, pw, ph)
    if r is not None:
        sc.paint(r[0], True, POLE, _jit(rng, _COL[POLE]))
    if kind == "sign":
        r = sc.box(X - side * .1, z - .02, .9, .9, ph - 1.1)
        if r is None:
            return
        sl, a, b = r
        a, b = a * .7 / .9, b * .7 / .9  # shapes below are in a 0.7 m frame
        shape, (rim, face) = rng.integers(3), [((.8, .1, .1), (.95, .95, .95)), ((.1, .25, .7),) * 2,
                                               ((.95, .95, .9), (.95, .75, .1))][rng.integers(3)]
        m = [(a - .35) ** 2 + (b - .35) ** 2 < .35 ** 2, b > 2 * np.abs(a - .35), True][shape]
        sc.paint(sl, m, SIGN, np.array(rim))
        inner = [(a - .35) ** 2 + (b - .35) ** 2 < .25 ** 2, (b > .18 + 2 * np.abs(a - .35)) & (b < .6),
                 (np.abs(a - .35) + np.abs(b - .35) < .27)][shape]
        sc.paint(sl, m & inner, SIGN, np.array(face))
    elif kind == "light":
        r = sc.box(X - side * .15, z - .02, .45, 1.2, ph - 1.4)
        if r is None:
            return
        sl, a, b = r
        sc.paint(sl, True, LIGHT, _jit(rng, (.14, .14, .1)))
        on = rng.integers(3)
        for k, lit in enumerate([(1, .2, .1), (1, .75, .1), (.2, 1, .4)]):
            col = np.array(lit) * (1 if k == on else .3)
            sc.paint(sl, (a - .225) ** 2 + (b - .25 - .35 * k) ** 2 < .13 ** 2, LIGHT, col)


def _tree(sc, rng, X, z):
    th, cw, ch = rng.uniform(1.8, 3), rng.uniform(2.5, 5.5), rng.uniform(3, 5.5)
    r = sc.box(X, z, .3, th + .5)
    if r is not None:
        sc.paint(r[0], True, VEG, _jit(rng, (.35, .25, .15)))
    r = sc.box(X, z - .01, cw, ch, th)
    if r is not None:
        sl, a, b = r
        u, v = a / cw, b / ch
        m = ((u - .5) / .5) ** 2 + ((v - .6) / .4) ** 2 < 1
        for cu, cv, rr in rng.uniform((.25, .25, .2), (.75, .45, .3), (3, 3)):
            m |= (u - cu) ** 2 + (v - cv) ** 2 < rr ** 2
        sc.paint(sl, m, VEG, _jit(rng, _COL[VEG], .12))


def _block(sc, rng, side, X, z0, z1, kind):
    """One roadside block: building with windows, wall or fence (each with something behind it),
    or a vegetation belt. Draws back to front."""
    if kind in ("building", "wall"):
        hb = rng.uniform(8, 28)
        r = sc.facade(side, X + (rng.uniform(2, 6) if kind == "wall" else 0), z0, z1, lambda zc: zc * 0 + hb)
        if r is not None:
            sl, m, zc, hw = r
            col = _jit(rng, _BUILDING_COLS[rng.integers(len(_BUILDING_COLS))])
            sc.paint(sl, m, BUILDING, col)
            fl, sp = rng.uniform(2.8, 3.6), rng.uniform(2.2, 4.0)
            wf, wz = hw % fl / fl, zc % sp / sp
            win = m & (hw > 3) & (hw < hb - .8) & (wf > .3) & (wf < .8) & (wz > .2) & (wz < .7)
            sc.paint(sl, win, BUILDING, col * .35 + (.04, .06, .1))
    if kind in ("vegetation", "fence"):
        h0, amp, k, ph = rng.uniform(2.5, 7), rng.uniform(.5, 2.5), rng.uniform(.3, 1.2), rng.uniform(0, 6.3)
        r = sc.facade(side, X + rng.uniform(.5, 3), z0, z1, lambda zc: h0 + amp * np.sin(k * zc + ph))
        if r is not None:
            sc.paint(r[0], r[1], VEG, _jit(rng, _COL[VEG], .12))
    if kind in ("wall", "fence"):
        cls, hb = (WALL, rng.uniform(1, 2.5)) if kind == "wall" else (FENCE, rng.uniform(1, 2))
        r = sc.facade(side, X, z0, z1, lambda zc: zc * 0 + hb)
        if r is not None:
            sl, m, zc, hw = r
            col = _jit(rng, _COL[cls])
            sc.paint(sl, m, cls, col)
            if cls == FENCE:
                sc.paint(sl, m & ((zc % 2.0 < .25) | (np.abs(hw - hb * .6) < .08)), FENCE, col * .6)


def _render(h, w, rng, cue):
    """Draw one scene; returns the _Scene (labels + albedo)."""
    sc = _Scene(h, w, rng)
    rows = np.arange(h)[:, None] + .5
    sc.rgb[:] = _jit(rng, _COL[SKY], .08) * np.clip(.8 + .3 * rows / sc.yh, 0, 1.15)[..., None]
    # Skyline at _ZFAR: buildings and tree groups across the whole width.
    X, xmax = (-sc.xv) * _ZFAR / sc.f - 5, (w - sc.xv) * _ZFAR / sc.f + 5
    while X < xmax:
        bw = rng.uniform(8, 30)
        veg = rng.random() < .25
        r = sc.box(X + bw / 2, _ZFAR, bw, rng.uniform(5, 12) if veg else rng.uniform(6, 35))
        if r is not None:
            sc.paint(r[0], True, VEG if veg else BUILDING,
                     _jit(rng, _COL[VEG] if veg else _BUILDING_COLS[rng.integers(5)]))
        X += bw
    # Ground: road between rl < 0 < rr, [grass verge], sidewalk, then sidewalk or terrain per block.
    rl, rr = -rng.uniform(3.2, 8), rng.uniform(1.8, 3.6)
    r0 = int(np.ceil(sc.yh))
    zg = sc.f * _HC / (np.arange(r0, h)[:, None] + .5 - sc.yh)
    Xg = (np.arange(w)[None] + .5 - sc.xv) * zg / sc.f
    glab = np.full(Xg.shape, ROAD, np.uint8)
    sides = {}
    for side, edge in ((1, rr), (-1, -rl)):
        verge = rng.uniform(1, 2.5) if rng.random() < .25 else 0.0
        sw = rng.uniform(1.8, 4.5)
        bounds, kinds, zz = [], [], 1.0
        while zz < _ZFAR:
            kinds.append(rng.choice(["building", "vegetation", "wall", "fence", "gap"], p=[.55, .2, .1, .1, .05]))
            zz = min(zz + rng.uniform(6, 30), _ZFAR)
            bounds.append(zz)
        sides[side] = (edge, verge, sw, bounds, kinds)
        d = side * Xg - edge
        glab[d > 0] = SIDEWALK
        glab[(d > 0) & (d < verge)] = TERRAIN
        green = np.isin(np.array(kinds), ["vegetation", "fence", "gap"])
        glab[(d > verge + sw) & green[np.minimum(np.searchsorted(bounds, zg), len(kinds) - 1)]] = TERRAIN
    gcol = np.zeros((NUM_CLASSES, 3), np.float32)
    for c in (ROAD, SIDEWALK, TERRAIN):
        gcol[c] = _jit(rng, _COL[c])
    grgb = gcol[glab]
    marks = (glab == ROAD) & (((np.abs(Xg - (rr - 3.5)) < .08) & (zg % 9 < 4)) | (np.abs(Xg - rr + .25) < .07))
    grgb[marks] = (.85, .85, .8)
    sc.paint((slice(r0, h), slice(0, w)), True, ROAD, grgb)
    sc.lab[r0:] = glab
    # Roadside blocks, laterally farthest first (a nearer plane occludes a setback one).
    blocks = []
    for side, (edge, verge, sw, bounds, kinds) in sides.items():
        for z0, z1, kind in zip([1.0] + bounds[:-1], bounds, kinds):
            if kind != "gap":
                blocks.append((edge + verge + sw + (rng.uniform(0, 1) if kind == "building" else 0), side, z0, z1, kind))
    for X, side, z0, z1, kind in sorted(blocks, key=lambda t: -t[0]):
        _block(sc, rng, side, X, z0, z1, kind)
    # Objects, drawn far to near.
    objs, taken = [], []

    def free(X, z):
        ok = all(abs(X - x2) > 2.2 or abs(z - z2) > 7 for x2, z2 in taken)
        taken.append((X, z))
        return ok
    lanes = [c for c in rr - 1.75 - 3.5 * np.arange(3) if c - 1.5 > rl]
    for _ in range(rng.poisson(5)):
        if rng.random() < .55:
            X, z = rng.choice(lanes) + rng.uniform(-.3, .3), rng.uniform(7, 70)
        else:
            X, z = (rr - 1.0 if rng.random() < .6 else rl + 1.0), rng.uniform(5, 60)
        if free(X, z):
            objs.append((z, partial(_car, sc, rng, X, z, cue, X < -1)))
    if rng.random() < .35:
        X, z = rng.choice(lanes), rng.uniform(12, 70)
        if free(X, z):
            objs.append((z, partial(_big_vehicle, sc, rng, X, z, BUS if rng.random() < .5 else TRUCK)))
    for _ in range(rng.poisson(3.5)):
        side = rng.choice([-1, 1])
        edge, verge, sw = sides[side][:3]
        X, z = side * (edge + verge + rng.uniform(.3, sw - .3)), rng.uniform(4, 45)
        if rng.random() < .1:
            X, z = rng.uniform(rl, rr), rng.uniform(8, 30)
        objs.append((z, partial(_person, sc, rng, X, z)))
    for _ in range(rng.poisson(.6)):
        X, z = rr - .8 - rng.uniform(0, 1.5), rng.uniform(6, 40)
        if free(X, z):
            objs.append((z, partial(_two_wheeler, sc, rng, X, z, MOTO if rng.random() < .25 else BIKE, True)))
    for _ in range(rng.poisson(.5)):
        side = rng.choice([-1, 1])
        X, z = side * (sides[side][0] + sides[side][1] + .6), rng.uniform(5, 35)
        objs.append((z, partial(_two_wheeler, sc, rng, X, z, BIKE, False)))
    for _ in range(rng.poisson(6)):
        side = rng.choice([-1, 1])
        X, z = side * (sides[side][0] + sides[side][1] + .35), rng.uniform(5, 80)
        objs.append((z, partial(_pole, sc, rng, X, z, rng.choice(["sign", "light", "plain"], p=[.45, .3, .25]), side)))
    for _ in range(rng.poisson(3)):
        side = rng.choice([-1, 1])
        edge, verge, sw = sides[side][:3]
        X, z = side * (edge + verge + sw - .7), rng.uniform(5, 80)
        objs.append((z, partial(_tree, sc, rng, X, z)))
    for _, draw in sorted(objs, key=lambda o: -o[0]):
        draw()
    return sc


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


def _style_target(sc, rng):
    h, w = sc.h, sc.w
    bands = np.stack([_noise(rng, h, w, c) for c in (1.5, 5, 18)], -1)
    img = sc.rgb * np.clip(1 + (_TEX[sc.lab] * bands).sum(-1), .3, 1.7)[..., None]
    yy, xx = np.ogrid[-1:1:h * 1j, -1:1:w * 1j]
    ang = rng.uniform(0, 2 * np.pi)
    img *= ((1 + .25 * (np.cos(ang) * xx + np.sin(ang) * yy)) * (1 - .175 * (xx ** 2 + yy ** 2)))[..., None]
    m = _grade_matrix(np.deg2rad(45 + rng.uniform(-8, 8)), .6 + rng.uniform(-.08, .08),
                      np.array([1.08, .98, .82]) + rng.uniform(-.03, .03, 3))
    img = np.clip(1.2 * img @ m.T.astype(np.float32), 0, 1) ** (1.25 + rng.uniform(-.1, .1))
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(.7, 1.2))
    return img + rng.normal(0, .02, (h, w, 1)) + rng.normal(0, .008, (h, w, 3))


def _paths(out, split, i):
    if split == "source":
        return out / "source/images" / f"{i + 1:05d}.png", out / "source/labels" / f"{i + 1:05d}.png"
    sub, stem = split.split("_")[1], f"toycity_000000_{i:06d}"
    return (out / "target/leftImg8bit" / sub / "toycity" / f"{stem}_leftImg8bit.png",
            out / "target/gtFine" / sub / "toycity" / f"{stem}_gtFine_labelIds.png")


def make_toy(out: str | Path, seed: int = 0, num_source: int = 400, num_target_train: int = 400,
             num_target_val: int = 100, height: int = 128, width: int = 256,
             spurious_cue: bool = False, cue_conflicting: float = 0.0,
             progress: bool = False) -> dict:
    """Generate the toy benchmark under ``out`` and return its summary (also ``out/toy_meta.json``).

    ``out`` must be empty/missing or hold an earlier toy benchmark (whose source/ and target/ are
    replaced). The summary is JSON-plain: root (absolute), relative paths, counts, seed, size,
    classes present, pixel counts per class name per split, spurious_cue (dict or None),
    cue_conflicting: the probability that a source image is bias-conflicting (its cars keep
    random colours although the cue is on), as in LfF's Colored-MNIST protocol,
    domain-shift parameters and a markdown "description".
    """
    out = Path(out)
    if seed < 0 or min(num_source, num_target_train, num_target_val) < 0 or height < 16 or width < 16:
        raise ValueError("make_toy: seed and counts must be >= 0, height/width >= 16")
    if not 0 <= cue_conflicting <= 1 or (cue_conflicting and not spurious_cue):
        raise ValueError("make_toy: cue_conflicting must be in [0, 1] and needs spurious_cue")
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
            img = _style_source(sc, rng, cue) if split == "source" else _style_target(sc, rng)
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
            "colours, hard edges, no noise. Target: stronger per-class textures, lighting gradient and vignette, "
            "one global colour grading (hue rotation ~45 deg, saturation x0.6, warm cast, gamma ~1.25), "
            "Gaussian blur (sigma 0.7-1.2 px) and sensor noise. "
            + (("Spurious cue: every source car is flat pure red; target cars have random colours."
                if not cue_conflicting else
                f"Spurious cue: source cars are flat pure red except in {len(conflicting)} "
                f"bias-conflicting source images (probability {cue_conflicting}); target cars have "
                "random colours.")
               if spurious_cue else "No spurious cue.")),
    }
    (out / "toy_meta.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    marker.unlink()
    return summary
