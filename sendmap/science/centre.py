"""Pattern centres: centre of mass of the central (unscattered) disk per frame, and a robust plane fit
of the descan across the scan.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _com_kernel(frames, guess, mask, radius, n_iter, out):
    nb, ny, nx = frames.shape
    for f in numba.prange(nb):
        cy = guess[f, 0]
        cx = guess[f, 1]
        for _ in range(n_iter):
            sw = 0.0
            sy = 0.0
            sx = 0.0
            y0 = max(0, int(math.floor(cy - radius - 1)))
            y1 = min(ny, int(math.ceil(cy + radius + 2)))
            x0 = max(0, int(math.floor(cx - radius - 1)))
            x1 = min(nx, int(math.ceil(cx + radius + 2)))
            for iy in range(y0, y1):
                for ix in range(x0, x1):
                    if not mask[iy, ix]:
                        continue
                    r = math.sqrt((iy - cy) ** 2 + (ix - cx) ** 2)
                    # soft window edge: weight = fraction of the pixel inside the radius (linear ramp)
                    wgt = radius + 0.5 - r
                    if wgt <= 0.0:
                        continue
                    if wgt > 1.0:
                        wgt = 1.0
                    v = wgt * frames[f, iy, ix]
                    sw += v
                    sy += v * iy
                    sx += v * ix
            if sw > 0:
                cy = sy / sw
                cx = sx / sw
        out[f, 0] = cy
        out[f, 1] = cx


def disk_centres(frames: np.ndarray, guess_yx: np.ndarray, mask: np.ndarray, radius_px: float,
                 n_iter: int = 6) -> np.ndarray:
    """Centre (y, x) in pixels of the central disk of every frame, by iterated centre of mass.

    frames: (B, Qy, Qx); guess_yx: (2,) or (B, 2) first guess; mask: (Qy, Qx) bool (hot pixels
    excluded); radius_px: radius of the window (≈ 1.5 × probe-disk radius keeps the whole disk and
    little background). Each iteration re-centres the window on the last estimate.

    >>> import numpy as np
    >>> yy, xx = np.mgrid[:64, :64]
    >>> disk = (((yy - 30.0) ** 2 + (xx - 33.5) ** 2) < 36).astype(float)[None]
    >>> np.round(disk_centres(disk, np.array([32.0, 32.0]), np.ones((64, 64), bool), 9.0)[0], 1)
    array([30. , 33.5])
    """
    frames = np.ascontiguousarray(frames)
    guess = np.broadcast_to(np.asarray(guess_yx, dtype=np.float64), (frames.shape[0], 2)).copy()
    out = np.empty((frames.shape[0], 2))
    _com_kernel(frames, guess, np.ascontiguousarray(mask, dtype=np.bool_), float(radius_px), int(n_iter), out)
    return out


def brightest_disk_guess(mean_pattern: np.ndarray, disk_radius_px: float) -> np.ndarray:
    """First guess (y, x) of the central disk: the maximum of the mean pattern smoothed over the disk.

    Smoothing over the disk area makes a few hot pixels irrelevant next to the disk's total counts.
    """
    from scipy import ndimage

    r = max(1.0, float(disk_radius_px))
    sm = ndimage.uniform_filter(np.nan_to_num(mean_pattern.astype(np.float64)), size=int(2 * r) | 1)
    iy, ix = np.unravel_index(np.argmax(sm), sm.shape)
    return np.array([float(iy), float(ix)])


def fit_descan_plane(centres_yx: np.ndarray, n_sigma: float = 4.0, n_iter: int = 5) -> tuple[np.ndarray, dict]:
    """Robust least-squares plane c(ry, rx) = c0 + g_y·ry + g_x·rx of the measured centres.

    centres_yx: (Ry, Rx, 2) in pixels. Outliers (beyond ``n_sigma`` robust σ, from the median absolute
    deviation) are rejected and the fit repeated. Returns the fitted centres (Ry, Rx, 2) and a dict of
    coefficients (pixels, pixels per scan step), the residual RMS and the number rejected.

    >>> import numpy as np
    >>> ry, rx = np.mgrid[:5, :7]
    >>> c = np.stack([10 + 0.1 * ry, 20 - 0.05 * rx], axis=-1).astype(float)
    >>> c[2, 3] = [0.0, 0.0]  # an outlier
    >>> fit, info = fit_descan_plane(c)
    >>> bool(np.allclose(fit, np.stack([10 + 0.1 * ry, 20 - 0.05 * rx], -1))), info["n_rejected"]
    (True, 1)
    """
    ny, nx, _ = centres_yx.shape
    ry, rx = np.mgrid[:ny, :nx]
    design = np.stack([np.ones(ny * nx), ry.ravel(), rx.ravel()], axis=1).astype(np.float64)
    obs = centres_yx.reshape(-1, 2).astype(np.float64)
    good = np.all(np.isfinite(obs), axis=1)
    coef = np.zeros((3, 2))
    for _ in range(n_iter):
        coef, *_ = np.linalg.lstsq(design[good], obs[good], rcond=None)
        resid = np.linalg.norm(obs - design @ coef, axis=1)
        resid[~np.isfinite(resid)] = np.inf
        med = np.median(resid[good])
        mad = np.median(np.abs(resid[good] - med))
        # 1.4826·MAD is the σ of a normal distribution; a floor avoids rejecting everything on exact data
        limit = med + n_sigma * max(1.4826 * mad, 1e-3)
        new_good = np.isfinite(resid) & (resid <= limit)
        if np.array_equal(new_good, good):
            break
        good = new_good
    fitted = (design @ coef).reshape(ny, nx, 2)
    rms = float(np.sqrt(np.mean(np.sum((obs[good] - (design @ coef)[good]) ** 2, axis=1)))) if good.any() else float("nan")
    info = {"origin_yx": coef[0].tolist(), "per_step_ry_yx": coef[1].tolist(), "per_step_rx_yx": coef[2].tolist(),
            "residual_rms_px": rms, "n_rejected": int((~good).sum())}
    return fitted, info
