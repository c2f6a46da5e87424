"""Shadows on the detector: a beam stop and an aperture, found from the mean (or sum) pattern of a dataset.

Pure functions, arrays in, arrays out; conventions of :mod:`sendmap.science.mask` (a *mask* is (Qy, Qx) bool, True
where a pixel is used; ``beam_stop`` and ``aperture`` are True where a pixel is excluded).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage


def _radial_bins(shape, centre_yx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.indices(shape, dtype=np.float64)
    dy, dx = yy - centre_yx[0], xx - centre_yx[1]
    r = np.hypot(dy, dx)
    return r, np.rint(r).astype(np.int64), np.arctan2(dy, dx)


def _noise_scale(img: np.ndarray, used: np.ndarray) -> float:
    """k in var(pixel) ≈ k · level, estimated from the residual from the 3×3 median (Poisson: k = 1 for
    a sum pattern, 1/N for the mean of N frames; robust to structure because it uses a median)."""
    med3 = ndimage.median_filter(img, size=3, mode="nearest")
    sel = used & (med3 > 0)
    if sel.sum() < 10:
        return 0.0
    ratio = (img[sel] - med3[sel]) ** 2 / med3[sel]
    # median of χ²₁ is 0.455; the residual from a 9-pixel median has ~1.17× the pixel variance
    return float(np.median(ratio) / (0.455 * 1.17))


def _window_max(med: np.ndarray, start: int, stop: int) -> np.ndarray:
    """ref[r] = max(med[r + start : r + stop + 1]), the window clamped to the last finite bin (so the
    outermost radii use the outermost level); 0 where the window holds no finite value."""
    nb = med.size
    valid = np.nonzero(np.isfinite(med))[0]
    out = np.zeros(nb)
    if valid.size == 0:
        return out
    last = int(valid[-1])
    for r in range(nb):
        lo, hi = min(r + start, last), min(r + stop, last)
        w = med[lo:hi + 1]
        w = w[np.isfinite(w)]
        out[r] = max(float(w.max()), 0.0) if w.size else 0.0
    return out


def _dark_pixels(img, used, centre_yx, dark_fraction, n_sigma, k_noise, ref_offset_px, weak=False,
                 ref_window_px=8):
    """Used pixels far darker than the pattern level expected at their radius.

    Levels are azimuthal medians of the used pixels in 1-px radius bins about ``centre_yx``. A shadow
    covers a minority of the azimuth except under the beam stop's tip, so the level expected at radius r
    is the largest median between r + ``ref_offset_px`` and r + ``ref_offset_px`` + ``ref_window_px``
    (a diffraction pattern's level falls outwards; looking a few px out reaches past the tip's edge, and
    the tip's interior, beyond that reach, is filled as a hole of the shadow later). **Strong**: value <
    ``dark_fraction`` × expected by more than ``n_sigma`` Poisson σ, for the pixel itself or for the
    mean of its 3×3 neighbourhood (at low dose single pixels hold too few counts). With ``weak`` also
    returns a superset for hysteresis growth: the 3×3 mean below the same fraction at only 2 σ. (A
    fraction well below 1 matters: between the Bragg disks of a spotty mean pattern the level can be
    half the azimuthal median.)"""
    r, rb, _ = _radial_bins(img.shape, centre_yx)
    nb = int(rb.max()) + 1
    lab = np.where(used, rb + 1, 0)
    med = np.asarray(ndimage.median(img, labels=lab, index=np.arange(1, nb + 1)), dtype=np.float64)
    # levels only from (nearly) full circles: a bin beyond the largest circle inside the detector holds a few
    # corner pieces, whose median is not the pattern's level at that radius (64² synthetic scan: two of four
    # corners hold Cu Bragg spots, median 1.3 against 0.3 counts, and the dim corners were called a beam stop)
    full = circle_coverage(img.shape, centre_yx, np.arange(nb)) >= MIN_CIRCLE_COVERAGE
    has = np.bincount(lab.ravel(), minlength=nb + 1)[1:] > 0
    off = int(math.ceil(ref_offset_px))
    ref = _window_max(np.where(full & has, med, -np.inf), off, off + int(ref_window_px))[rb]
    # evidence (strong dark pixels) only where the level was measured on full circles; the weak superset (for
    # growing an arm that the evidence found out to the edge) also in the corners, there against the outermost
    # full circle's level (not the corner pieces': the dim corners of the 64² scan would join a real arm)
    evidence = full[rb]
    ref_grow = ref
    num = ndimage.uniform_filter(np.where(used, img, 0.0), 3, mode="constant")
    den = ndimage.uniform_filter(used.astype(np.float64), 3, mode="constant")
    sm = num / np.maximum(den, 1e-12)
    n_sm = np.maximum(9.0 * den, 1.0)

    def dark(ref, nsig):
        sig = np.sqrt(k_noise * ref)
        return used & (img < dark_fraction * ref) & (
            (ref - img > nsig * sig) | ((sm < dark_fraction * ref) & (ref - sm > nsig * sig / np.sqrt(n_sm))))

    strong = dark(ref, n_sigma) & evidence
    if not weak:
        return strong
    sig = np.sqrt(k_noise * ref_grow)
    weak_d = used & (sm < dark_fraction * ref_grow) & (ref_grow - sm > 2.0 * sig / np.sqrt(n_sm))
    return strong, weak_d | strong | dark(ref_grow, n_sigma)


MIN_CIRCLE_COVERAGE = 0.9
"""A radius bin gives the pattern's level (the azimuthal median) only where at least this share of its circle lies on
the detector: a median over ≥ 90 % of the azimuth is moved by features covering < 40 % of it (a beam-stop arm, Bragg
spots), one over a few corner pieces is not a level at all."""


def circle_coverage(shape, centre_yx, radii, n_angles: int = 720) -> np.ndarray:
    """Share (0–1) of each circle of radius ``radii`` (px) about ``centre_yx`` that lies on a detector of ``shape``
    (pixel centres at integers, edges at −0.5 and n − 0.5), from ``n_angles`` points on the circle (0.5° steps).

    >>> [round(float(v), 2) for v in circle_coverage((64, 64), (31.5, 31.5), [10, 32, 45])]
    [1.0, 1.0, 0.0]
    """
    ang = (np.arange(n_angles) + 0.5) * (2 * math.pi / n_angles)
    rr = np.asarray(radii, dtype=np.float64)[:, None]
    y = centre_yx[0] + rr * np.sin(ang)[None]
    x = centre_yx[1] + rr * np.cos(ang)[None]
    inside = (y >= -0.5) & (y <= shape[0] - 0.5) & (x >= -0.5) & (x <= shape[1] - 0.5)
    return inside.mean(axis=1)


def _fit_circle(y: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kåsa) least-squares circle through points: (cy, cx, radius)."""
    a = np.column_stack([x, y, np.ones_like(x)])
    b = -(x * x + y * y)
    (d, e, f), *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = -d / 2.0, -e / 2.0
    return float(cy), float(cx), float(math.sqrt(max(cx * cx + cy * cy - f, 0.0)))


def _find_aperture(img, used, centre_yx, r_min_px, dark_fraction, min_area_px, n_sectors=72):
    """A circular aperture's shadow: in most azimuthal sectors the level drops, within ~2 px, to below
    ``dark_fraction`` of the level just inside and stays there out to the detector edge; the drop
    radii lie on one circle; and ≥ 90 % of the used pixels beyond that circle are that dark."""
    r, rb, th = _radial_bins(img.shape, centre_yx)
    nb = int(rb.max()) + 2
    sec = np.floor((th + math.pi) / (2 * math.pi) * n_sectors).astype(np.int64) % n_sectors
    idx = (sec * nb + rb)[used]
    s = np.bincount(idx, weights=img[used], minlength=n_sectors * nb).reshape(n_sectors, nb)
    c = np.bincount(idx, minlength=n_sectors * nb).reshape(n_sectors, nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / c  # NaN where a bin has no pixel
    # the level just inside radius r0: the median of the used bins among r0-5 .. r0-2 (at least two), every sector
    # and radius at once (one nanmedian call instead of ~7000 np.median calls of ≤ 4 values: 0.27 → 0.01 s)
    win = np.lib.stride_tricks.sliding_window_view(p, 4, axis=1)  # win[k, r0 - 5] = p[k, r0-5 : r0-1]
    n_inner = np.sum(np.isfinite(win), axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: skipped below (n_inner < 2)
        inner_level = np.nanmedian(win, axis=2)
    pts = []
    for k in range(n_sectors):
        pk = p[k]
        ok = c[k] > 0
        if ok.sum() < 8:
            continue
        outmax = np.maximum.accumulate(np.where(ok, pk, -np.inf)[::-1])[::-1]
        n_out = np.cumsum(ok[::-1])[::-1]
        for r0 in range(max(int(math.ceil(r_min_px)), 5), nb):
            if n_out[r0] < 2:
                break
            if n_inner[k, r0 - 5] < 2:
                continue
            lev = float(inner_level[k, r0 - 5])
            if lev > 0 and outmax[r0] <= dark_fraction * lev:
                # edge: where the sector level crosses half the inside level (linear between bins)
                edge = r0 - 0.5
                for j in range(r0 - 1, r0 - 4, -1):
                    if ok[j] and pk[j] >= 0.5 * lev:
                        nxt = pk[j + 1] if ok[j + 1] else 0.0
                        edge = j + (pk[j] - 0.5 * lev) / max(pk[j] - nxt, 1e-300)
                        break
                ang = (k + 0.5) / n_sectors * 2 * math.pi - math.pi
                pts.append((centre_yx[0] + edge * math.sin(ang), centre_yx[1] + edge * math.cos(ang)))
                break
    info = {"found": False, "n_sectors": len(pts)}
    if len(pts) < 6:
        return None, info
    pts = np.asarray(pts)
    keep = np.ones(len(pts), bool)
    for _ in range(4):
        cy, cx, rad = _fit_circle(pts[keep, 0], pts[keep, 1])
        res = np.abs(np.hypot(pts[:, 0] - cy, pts[:, 1] - cx) - rad)
        new = res <= max(1.5, 3.0 * 1.4826 * float(np.median(res[keep])))
        if new.sum() < 6 or np.array_equal(new, keep):
            keep = new if new.sum() >= 6 else keep
            break
        keep = new
    cy, cx, rad = _fit_circle(pts[keep, 0], pts[keep, 1])
    d = np.hypot(*np.subtract(np.indices(img.shape), np.array([cy, cx])[:, None, None]))
    # sectors that see beyond the circle: where a shadow could have been found
    beyond = used & (d > rad + 2.0)
    sec_beyond = np.unique(sec[beyond]).size
    outside = used & (d > rad + 1.5)
    ring_in = used & (d > rad - 6.0) & (d < rad - 2.0)
    info.update(n_sectors=int(keep.sum()), n_sectors_beyond=int(sec_beyond), centre_yx=[cy, cx], radius_px=rad)
    if keep.sum() < max(6, 0.5 * sec_beyond) or outside.sum() < min_area_px or ring_in.sum() < 10:
        return None, info
    lev_in = float(np.median(img[ring_in]))
    num = ndimage.uniform_filter(np.where(used, img, 0.0), 3)
    den = ndimage.uniform_filter(used.astype(np.float64), 3)
    smooth = num / np.maximum(den, 1e-12)
    frac_dark = float(np.mean(smooth[outside] <= dark_fraction * lev_in))
    info.update(inside_level=lev_in, outside_level=float(np.mean(img[outside])), dark_fraction_outside=frac_dark)
    if not (lev_in > 0 and frac_dark >= 0.9 and np.mean(img[outside]) <= dark_fraction * lev_in):
        return None, info
    info["found"] = True
    return (cy, cx, rad), info


def shadow_masks(mean_pattern: np.ndarray, centre_guess_yx=None, mask: np.ndarray | None = None,
                 disk_radius_px: float | None = None, margin_px: float = 2.0, dark_fraction: float = 0.3,
                 aperture_dark_fraction: float = 0.1, n_sigma: float = 5.0, min_area_px: int = 30,
                 n_frames: int | None = None) -> dict:
    """Beam stop and aperture shadows found from the mean (or sum) pattern of a scan.

    mean_pattern: (Qy, Qx) mean or sum of the frames (counts; the method is scale-free). centre_guess_yx:
    (y, x) pixels, or None (the brightest disk-sized spot, refined). mask: (Qy, Qx) bool, True = used
    (pass the hot/dead/saturated/user mask: those pixels are neither evidence nor shadow).
    disk_radius_px: central-disk radius (α/λ / Q per pixel), used for the first guess and to keep the
    aperture search outside the disk (default 5 % of the detector). n_frames: frames averaged in
    ``mean_pattern`` (1 for a sum) for the Poisson significance; default estimated from the data.

    1. **Centre**: the point-symmetry centre of the mean pattern (``centre.symmetry_centres``): first
       searched over ±30 % of the detector (±max(6 px, 2 disk radii) about ``centre_guess_yx`` if
       given) with the near-zero pixels excluded, then refined with the dark pixels (step 2) and their
       mirrors excluded, until it moves < 0.05 px (≤ 3 times).
    2. **Dark pixels**: used pixels below ``dark_fraction`` of the level expected at their radius (the
       largest azimuthal median 3–11 px further out) by more than ``n_sigma`` σ (the pixel or its 3×3
       mean); grown (hysteresis) through pixels whose 3×3 mean is that dark at only 2 σ.
    3. **Aperture**: in at least half of the 5° sectors that reach past it, the level drops within ~2 px to
       below ``aperture_dark_fraction`` of the level just inside and stays there to the detector edge;
       those edges fit one circle (radius > 3 disk radii), and ≥ 90 % of the pixels beyond it are dark.
    4. **Beam stop**: connected groups (8-neighbour) of dark pixels of at least ``min_area_px`` pixels
       that touch the detector edge or the aperture shadow — an arm entering from outside — with their
       holes filled. A dead pixel or a dark speck inside the detector is never a beam stop; bright
       Bragg spots raise no dark pixels; an isotropic pattern has none.
    5. Both shadows are grown by ``margin_px`` (default 2 px: the partly shadowed rim and the blur of a
       drifting pattern): the beam stop by ``margin_px`` pixels along rows, columns and diagonals (a
       (2m+1)² square), the aperture circle's radius shrunk by ``margin_px``; ``margin_px=0`` gives the
       shadow as found (pixels more than ~70 % shadowed). On synthetic 128² scans every pixel that
       loses ≥ 10 % of its counts lies inside the grown masks, down to 2e3 electrons per pattern.

    Returns ``{"beam_stop", "aperture"}`` (Qy, Qx) bool, **True = shadowed** pixel, ``"mask"`` (True =
    used, i.e. neither), and ``"info"``: ``centre_yx``; ``beam_stop`` {found, n_pixels (as found, before
    the margin), angle_deg (from
    the centre towards where the arm leaves the detector, from +x towards +y), width_px (arm width in the
    outer half), centre_covered_fraction (share of the central disk, radius ``disk_radius_px``, under
    the shadow: > 0.5 means find the centres from the rings, ``symmetry_centres``)}; ``aperture``
    {found, centre_yx, radius_px, ...}.

    >>> yy, xx = np.mgrid[:96, :96]
    >>> r = np.hypot(yy - 48.2, xx - 47.6)
    >>> img = 200 * (r < 5) + 20 / (1 + (r / 8) ** 2) + 3 * np.exp(-((r - 25) / 4) ** 2)
    >>> img = img * ~((np.abs(xx - 47.6) < 5) & (yy > 40)) * (r < 44)  # arm from the bottom, aperture
    >>> sh = shadow_masks(img, disk_radius_px=5)
    >>> bs, ap = sh["info"]["beam_stop"], sh["info"]["aperture"]
    >>> bs["found"], round(bs["angle_deg"]), round(bs["width_px"]), ap["found"], round(ap["radius_px"])
    (True, 90, 10, True, 44)
    """
    from .centre import brightest_disk_guess, symmetry_centres

    img = np.nan_to_num(np.asarray(mean_pattern, dtype=np.float64))
    shape = img.shape
    used = np.ones(shape, bool) if mask is None else np.asarray(mask, bool).copy()
    if used.shape != shape:
        raise ValueError(f"mask shape {used.shape} does not match the pattern's {shape}")
    n_min = min(shape)
    r_disk = float(disk_radius_px) if disk_radius_px else 0.05 * n_min
    f = _low_count_binning(img, used, r_disk, n_frames)
    if f > 1:
        return _shadow_masks_binned(img, used, f, centre_guess_yx, r_disk, margin_px, dark_fraction,
                                    aperture_dark_fraction, n_sigma, min_area_px, n_frames)
    k_noise = (1.0 / n_frames) if n_frames else _noise_scale(img, used)
    ref_off = 3.0

    min_pairs = max(50, int(0.05 * img.size))
    r_sym = 0.45 * n_min

    def sym(c0, excl, search):
        res, score = symmetry_centres(img[None], c0, used & ~excl, 0.0, r_sym, search_px=search, smooth_px=1.0,
                                      min_pairs=min_pairs, return_score=True)
        return res[0], float(score[0])

    # first pass: hide the near-zero pixels (shadows) from the symmetry; the centre is searched widely
    # (a beam stop over the disk leaves no bright disk to guess from) from the brightest disk-sized spot
    # and from the detector's middle, keeping the more symmetric answer
    excl0 = ndimage.binary_dilation(img < 0.05 * np.median(img[used]), iterations=2) if used.any() else ~used
    if centre_guess_yx is None:
        starts = [brightest_disk_guess(np.where(used, img, 0.0), r_disk),
                  np.array([(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0])]
        search = 0.3 * n_min
    else:
        starts = [np.asarray(centre_guess_yx, dtype=np.float64)]
        search = max(6.0, 2.0 * r_disk)
    f = int(math.ceil(n_min / 128.0))
    if f > 1 and search > 8.0:
        # large detectors: the wide search on the pattern binned f×f to ≤ 128², then ±f px at full size
        ny, nx = (shape[0] // f) * f, (shape[1] // f) * f
        ok = (used & ~excl0)[:ny, :nx].reshape(ny // f, f, nx // f, f)
        wsum = np.where(used & ~excl0, img, 0.0)[:ny, :nx].reshape(ny // f, f, nx // f, f).sum(axis=(1, 3))
        cnt = ok.sum(axis=(1, 3))
        small = wsum / np.maximum(cnt, 1)
        small_used = cnt >= 0.5 * f * f
        cands = []
        for s0 in starts:
            cb, sc = symmetry_centres(small[None], (s0 + 0.5) / f - 0.5, small_used, 0.0, r_sym / f,
                                      search_px=search / f, smooth_px=1.0, min_pairs=max(50, int(0.05 * small.size)),
                                      return_score=True)
            if np.all(np.isfinite(cb[0])):
                cands.append(((cb[0] + 0.5) * f - 0.5, float(sc[0])))
        starts = [max(cands, key=lambda cs: cs[1])[0]] if cands else starts
        search = 2.0 * f
    cands = [sym(s0, excl0, search) for s0 in starts]
    cands = [cs for cs in cands if np.all(np.isfinite(cs[0]))]
    c = max(cands, key=lambda cs: cs[1])[0] if cands else starts[0]
    for _ in range(3):  # then with the dark pixels (and their mirrors) excluded
        dark = _dark_pixels(img, used, c, dark_fraction, n_sigma, k_noise, ref_off)
        c_new, _ = sym(c, ndimage.binary_dilation(dark, iterations=2), 3.0)
        if not np.all(np.isfinite(c_new)):
            break
        moved = float(np.hypot(*(c_new - c)))
        c = c_new
        if moved < 0.05:
            break
    dark = _dark_pixels(img, used, c, dark_fraction, n_sigma, k_noise, ref_off)

    # aperture (ignoring the dark arm's pixels, which would only cut some sectors short)
    arm_guess = ndimage.binary_dilation(dark, iterations=1)
    ap_fit, ap_info = _find_aperture(img, used & ~arm_guess, c, max(3.0 * r_disk, 0.15 * n_min),
                                     aperture_dark_fraction, min_area_px)
    yy, xx = np.indices(shape, dtype=np.float64)
    if ap_fit is not None:
        d_ap = np.hypot(yy - ap_fit[0], xx - ap_fit[1])
        aperture_core = d_ap > ap_fit[2]
        aperture = d_ap > ap_fit[2] - margin_px
    else:
        aperture_core = aperture = np.zeros(shape, bool)

    # beam stop: dark groups reaching the detector edge or the aperture shadow (levels beyond the
    # aperture's edge are not evidence of what an unshadowed pixel should hold). Hysteresis: groups of
    # weakly dark pixels (3×3 means, 2 σ) that hold strongly dark ones (5 σ), so that an arm is followed out
    # to the edge through a low-dose pattern's sparse outer pixels.
    strong, weak = _dark_pixels(img, used & ~aperture_core, c, dark_fraction, n_sigma, k_noise, ref_off,
                                weak=True)
    lab, n = ndimage.label(weak & ~aperture_core, structure=np.ones((3, 3), bool))
    edge = np.zeros(shape, bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    edge |= ndimage.binary_dilation(aperture_core, iterations=2)
    core = np.zeros(shape, bool)
    if n:
        sizes = np.bincount(lab[strong], minlength=n + 1)
        touching = np.unique(lab[edge & (lab > 0)])
        keep = [t for t in touching if sizes[t] >= min_area_px]
        if keep:
            core = np.isin(lab, keep)
            core = ndimage.binary_fill_holes(core)
    if margin_px > 0 and core.any():
        beam_stop = ndimage.distance_transform_cdt(~core, metric="chessboard") <= margin_px
    else:
        beam_stop = core.copy()

    r = np.hypot(yy - c[0], xx - c[1])
    bs_info = {"found": bool(core.any()), "n_pixels": int(core.sum())}
    if core.any():
        rc = r[core]
        ang = np.arctan2(yy[core] - c[0], xx[core] - c[1])
        far = rc >= 0.5 * rc.max()
        a = math.degrees(math.atan2(np.sin(ang[far]).mean(), np.cos(ang[far]).mean()))
        r_far = float(np.percentile(rc, 95))
        band = (rc >= 0.5 * r_far) & (rc < 0.8 * r_far)
        disk = r <= r_disk
        bs_info.update(angle_deg=a % 360.0, width_px=float(band.sum() / max(0.3 * r_far, 1e-9)),
                       closest_px=float(rc.min()),
                       centre_covered_fraction=float(beam_stop[disk].mean()) if disk.any() else 0.0)
    else:
        bs_info["centre_covered_fraction"] = 0.0
    return {"beam_stop": beam_stop, "aperture": aperture, "mask": ~(beam_stop | aperture),
            "info": {"centre_yx": [float(c[0]), float(c[1])], "beam_stop": bs_info, "aperture": ap_info,
                     "margin_px": float(margin_px)}}


SHADOW_MIN_COUNTS = 3.0
"""Counts per pixel (summed over the scan, outside the central disk) the shadow search needs: a shadowed 3×3 block
is then ≥ 5 σ below a lit one (9 × 3 = 27 counts against 0: √27 = 5.2 σ). With fewer (a 512² detector and a few
frames), the pattern is binned f × f until it has them."""


def _low_count_binning(img, used, r_disk, n_frames) -> int:
    """Binning factor (1, 2, … 8) that brings the mean counts per pixel outside the disk to
    :data:`SHADOW_MIN_COUNTS` (known counts only: ``n_frames`` given), keeping ≥ 48 binned pixels a side."""
    if not n_frames:
        return 1
    yy, xx = np.indices(img.shape, dtype=np.float64)
    r = np.hypot(yy - (img.shape[0] - 1) / 2.0, xx - (img.shape[1] - 1) / 2.0)
    sel = used & (r >= 2.0 * r_disk) & (r <= 0.45 * min(img.shape))
    if sel.sum() < 100:
        return 1
    level = float(img[sel].mean()) * float(n_frames)
    if level >= SHADOW_MIN_COUNTS or level <= 0:
        return 1
    f = int(math.ceil(math.sqrt(SHADOW_MIN_COUNTS / level)))
    return max(1, min(f, 8, min(img.shape) // 48))


def _shadow_masks_binned(img, used, f, centre_guess_yx, r_disk, margin_px, dark_fraction, aperture_dark_fraction,
                         n_sigma, min_area_px, n_frames) -> dict:
    """:func:`shadow_masks` on the pattern binned f × f (means of the used pixels; a binned pixel is used where at
    least half of its pixels are), the shadows found there brought back to full size and grown by ``margin_px``."""
    ny, nx = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    u4 = used[:ny, :nx].reshape(ny // f, f, nx // f, f)
    s = np.where(used, img, 0.0)[:ny, :nx].reshape(ny // f, f, nx // f, f).sum(axis=(1, 3))
    cnt = u4.sum(axis=(1, 3))
    small = s / np.maximum(cnt, 1)
    small_used = cnt >= 0.5 * f * f
    guess = None if centre_guess_yx is None else (np.asarray(centre_guess_yx, dtype=np.float64) + 0.5) / f - 0.5
    res = shadow_masks(small, guess, small_used, r_disk / f, 0.0, dark_fraction, aperture_dark_fraction, n_sigma,
                       max(6, int(math.ceil(min_area_px / (f * f)))), int(n_frames) * f * f)

    def up(a):
        full = np.zeros(img.shape, bool)
        full[:ny, :nx] = np.repeat(np.repeat(a, f, axis=0), f, axis=1)
        if ny < img.shape[0]:
            full[ny:, :nx] = full[ny - 1:ny, :nx]
        if nx < img.shape[1]:
            full[:, nx:] = full[:, nx - 1:nx]
        return full

    info = res["info"]
    to_full = lambda c: [(float(v) + 0.5) * f - 0.5 for v in c]  # noqa: E731
    info["centre_yx"] = to_full(info["centre_yx"])
    core = up(res["beam_stop"])
    if margin_px > 0 and core.any():
        beam_stop = ndimage.distance_transform_cdt(~core, metric="chessboard") <= margin_px
    else:
        beam_stop = core
    bs = info["beam_stop"]
    bs["n_pixels"] = int(core.sum())
    for k in ("width_px", "closest_px"):
        if k in bs:
            bs[k] = float(bs[k]) * f
    ap = info["aperture"]
    aperture = np.zeros(img.shape, bool)
    if ap.get("centre_yx") is not None:
        ap["centre_yx"] = to_full(ap["centre_yx"])
    if ap.get("radius_px") is not None:
        ap["radius_px"] = float(ap["radius_px"]) * f
    if ap.get("found"):
        yy, xx = np.indices(img.shape, dtype=np.float64)
        aperture = np.hypot(yy - ap["centre_yx"][0], xx - ap["centre_yx"][1]) > ap["radius_px"] - margin_px
    info.update(margin_px=float(margin_px), binned=f)
    return {"beam_stop": beam_stop, "aperture": aperture, "mask": ~(beam_stop | aperture), "info": info}
