"""Scene model of the toy benchmark (see `datamodules.toy` for the whole design): a small 3-D
street seen by a pinhole camera, rendered as an albedo image with per-pixel trainIds.
`_render(h, w, rng, cue)` -> a `_Scene` with `.rgb` (h,w,3) float32 in [0, 1] and `.lab` (h,w)
trainIds; `cue` paints every car flat `CUE_RGB`. All randomness comes from `rng`."""
from __future__ import annotations

import colorsys
from functools import partial

import numpy as np

from .labels import NUM_CLASSES

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR,
 TRUCK, BUS, TRAIN, MOTO, BIKE) = range(NUM_CLASSES)
CUE_RGB = (1.0, 0.0, 0.0)
_HC, _F, _ZFAR = 1.4, 1.1, 110.0  # camera height (m), focal length / width, skyline depth (m)
_BUILDING_COLS = [(.78, .66, .46), (.58, .58, .62), (.68, .42, .30), (.86, .84, .76), (.50, .42, .40)]
_COL = {ROAD: (.36, .36, .38), SIDEWALK: (.66, .54, .60), WALL: (.66, .62, .48), FENCE: (.52, .40, .24),
        POLE: (.48, .50, .54), VEG: (.22, .55, .14), TERRAIN: (.62, .70, .26), SKY: (.45, .68, .98)}

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
