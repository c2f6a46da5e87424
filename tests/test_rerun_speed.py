"""The re-run after a classification change (issue 20): the numba forms of sendmap's own classify/statistics science
(deconvolved mixtures, Potts field) equal the NumPy forms they replace, and positions.csv's column cache is hit for unchanged columns only."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from sendmap.science.mixture import best_mixture, fit_deconvolved_mixture
from sendmap.science.probability import potts_beta_pseudolikelihood
from sendmap.science.spatial import NEIGHBOUR_WEIGHTS, potts_mean_field


def _numpy_em(x, sigma, k, n_iter=500, tol=1e-9, min_var=1e-10):
    """The deconvolved mixture's EM in its former NumPy form (sendmap ≤ session 11), as the reference."""
    s2 = sigma ** 2
    mu = np.quantile(x, (np.arange(k) + 0.5) / k)
    var = np.full(k, max(np.var(x) / k ** 2 - np.median(s2), min_var))
    w = np.full(k, 1.0 / k)
    ll_old = -np.inf
    for _ in range(n_iter):
        tot = var[None, :] + s2[:, None]
        logp = np.log(w)[None, :] - 0.5 * (np.log(2 * np.pi * tot) + (x[:, None] - mu[None, :]) ** 2 / tot)
        m = logp.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logp - m).sum(axis=1))
        r, ll = np.exp(logp - lse[:, None]), float(lse.sum())
        nk = r.sum(axis=0) + 1e-300
        b = mu[None, :] + var[None, :] / tot * (x[:, None] - mu[None, :])
        bb = var[None, :] - var[None, :] ** 2 / tot
        mu = (r * b).sum(axis=0) / nk
        var = np.maximum((r * ((mu[None, :] - b) ** 2 + bb)).sum(axis=0) / nk, min_var)
        w = nk / x.size
        if abs(ll - ll_old) < tol * max(1.0, abs(ll)):
            break
        ll_old = ll
    order = np.argsort(mu)
    return w[order], mu[order], np.sqrt(var[order])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_deconvolved_mixture_kernel_equals_the_numpy_em(k):
    rng = np.random.default_rng(11)
    x = np.r_[rng.normal(0.285, 0.010, 1500), rng.normal(0.330, 0.012, 1000)]
    err = rng.uniform(0.003, 0.012, x.size)
    x = x + rng.normal(0, err)
    w, mu, sig = _numpy_em(x, err, k)
    r = fit_deconvolved_mixture(x, err, k, errors=False)
    np.testing.assert_allclose(r["weight"], w, rtol=1e-10)
    np.testing.assert_allclose(r["mean"], mu, rtol=1e-12)
    np.testing.assert_allclose(r["sigma"], sig, rtol=1e-9)
    fit = best_mixture(x, err)
    assert len(fit["mean"]) == 2 and np.all(np.isfinite(fit["mean_err"]))  # (the two simulated components)


def _numpy_mean_field(ll, beta, valid, n_iter=30, tol=1e-6):
    """potts_mean_field's former NumPy form (the reference)."""
    ry, rx, k = ll.shape
    ll = np.where(valid[..., None], ll, 0.0)

    def softmax(a):
        a = a - np.max(a, axis=-1, keepdims=True)
        e = np.exp(a)
        return e / e.sum(axis=-1, keepdims=True)

    def nsum(p):
        pad = np.pad(p, ((1, 1), (1, 1), (0, 0)))
        out = np.zeros_like(p)
        for dy in range(3):
            for dx in range(3):
                if NEIGHBOUR_WEIGHTS[dy, dx]:
                    out += NEIGHBOUR_WEIGHTS[dy, dx] * pad[dy:dy + ry, dx:dx + rx]
        return out

    p = softmax(ll)
    p[~valid] = 0.0
    for _ in range(n_iter):
        new = softmax(ll + beta * nsum(p))
        new[~valid] = 0.0
        new = 0.5 * (new + p)
        done = np.max(np.abs(new - p)) < tol
        p = new
        if done:
            break
    p[~valid] = np.nan
    return p


def test_potts_kernels_equal_their_numpy_forms():
    rng = np.random.default_rng(3)
    labels = np.zeros((30, 40), int)
    labels[:, 15:] = 1
    labels[10:20, 25:] = 2
    labels = np.where(rng.random(labels.shape) < 0.15, rng.integers(0, 3, labels.shape), labels)
    valid = rng.random(labels.shape) > 0.05
    ll = np.log(np.where(np.arange(3) == labels[..., None], 0.6, 0.2))
    for beta in (0.0, 0.7, 1.5):
        np.testing.assert_allclose(potts_mean_field(ll, beta, valid=valid), _numpy_mean_field(ll, beta, valid),
                                   atol=1e-14)
    # the pseudo-likelihood regrouped by neighbourhood picks the β of the sum over positions
    from sendmap.science.spatial import _neighbour_sum

    onehot = np.zeros((*labels.shape, 3))
    np.put_along_axis(onehot, np.where(valid, labels, 0)[..., None], valid[..., None].astype(float), axis=-1)
    counts = _neighbour_sum(onehot)[valid]
    own = np.take_along_axis(counts, labels[valid][:, None], axis=-1)[:, 0]
    betas = np.linspace(0.0, 2.0, 81)
    direct = betas[int(np.argmax([np.sum(b * own - np.log(np.exp(b * counts).sum(axis=1))) for b in betas]))]
    assert potts_beta_pseudolikelihood(labels, valid, 3) == direct > 0.5


def _tiny_store(path, cls):
    g = zarr.open_group(str(path), mode="w")
    ry, rx = cls.shape
    rng = np.random.default_rng(0)
    g.attrs.update({"calibration": {"scan_step_nm": 4.0}, "dose": {"electrons_per_pattern": 2e4,
                                                                   "electrons_per_A2": 125.0},
                    "statistics": {"classes": {}, "layers": {}, "regions": []}})
    g.create_array("maps/class", data=cls.astype(np.int8))
    peak = np.where(cls == 0, np.nan, rng.uniform(0.27, 0.34, cls.shape))
    g.create_array("maps/peak_q", data=peak)
    g.create_array("features/lif_z", data=rng.normal(3, 1, cls.shape))
    g.create_array("calibration/origin", data=rng.normal(64, 1, (ry, rx, 2)))
    g.create_array("profiles/q", data=np.linspace(0.05, 1.0, 20))
    g.create_array("statistics/class_mean_iqn", data=rng.random((6, 20)))
    return g


def test_positions_table_formats_only_changed_columns(tmp_path):
    """positions.csv after a classification change: the numeric columns whose values did not change come from the
    cache (.sendmap-cache/positions_columns.pkl), the changed ones are formatted afresh, and the file is the same, byte
    for byte, as one written without the cache; an unreadable cache is ignored."""
    from sendmap.report import tables

    cls = np.zeros((12, 9), int)
    cls[:, 4:] = 3
    out = tmp_path / "out"
    g = _tiny_store(tmp_path / "s.zarr", cls)
    tables.write_tables(g, out)
    cache_file = out / tables.POSITIONS_CACHE
    assert cache_file.exists()
    calls = []
    real = tables._format_column

    def counting(v, spec):
        calls.append(spec)
        return real(v, spec)

    tables._format_column = counting
    try:
        cls2 = cls.copy()
        cls2[:, 4] = 0  # a column of positions becomes crystalline: maps/peak_q and the peak columns change there
        g2 = _tiny_store(tmp_path / "s2.zarr", cls2)
        g2["maps/peak_q"][...] = np.where(cls2 == 0, np.nan, np.asarray(g["maps/peak_q"]))
        tables.write_tables(g2, out)
        # changed: peak_q (NaN at the new crystals); peak_height/prominence/fwhm_err stay all-NaN (no such arrays)
        assert calls == [".6g"]
        text = (out / "tables" / "positions.csv").read_text()
        cache_file.write_bytes(b"not a pickle")
        calls.clear()
        tables.write_tables(g2, out)
        assert len(calls) == 18  # every numeric column formatted afresh: ry/rx in nm, 14 values, the centre
        assert (out / "tables" / "positions.csv").read_text() == text
    finally:
        tables._format_column = real
    cache_file.unlink()
    fresh = tmp_path / "fresh"
    tables.write_tables(g2, fresh)
    assert (fresh / "tables" / "positions.csv").read_text() == text


def test_region_mixtures_cache_hit_and_miss(tmp_path, monkeypatch):
    """The statistics stage's region mixtures: a second call with the same regions takes every mixture from the
    cache (no fit) and returns the same entries; a region whose positions change is fitted again, the other not;
    ``reuse=False`` (--force) fits everything; an unreadable cache file is ignored."""
    from sendmap.stages import statistics as S

    rng = np.random.default_rng(2)
    cls = np.full((40, 60), 3, np.int8)
    cls[:, 28:32] = 0  # a crystal column splits the amorphous positions into two regions
    peak = np.where(cls == 0, np.nan, rng.normal(0.29, 0.01, cls.shape))
    err = np.full(cls.shape, 0.005)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    cache = tmp_path / "out" / S.REGION_MIXTURE_CACHE
    fits = []
    real = S.__dict__.get("best_mixture")
    from sendmap.science import mixture

    monkeypatch.setattr(mixture, "best_mixture", _counting(mixture.best_mixture, fits))
    first = S.region_mixtures(g, cls, peak, err, 4.0, cache_path=cache)
    assert len(fits) == 2 and cache.exists()
    again = S.region_mixtures(g, cls, peak, err, 4.0, cache_path=cache)
    assert len(fits) == 2 and again == first
    cls2 = cls.copy()
    cls2[:5, :3] = 5  # five-by-three positions of the left region become "uncertain": that region changes
    S.region_mixtures(g, cls2, peak, err, 4.0, cache_path=cache)
    assert len(fits) == 3
    S.region_mixtures(g, cls2, peak, err, 4.0, cache_path=cache, reuse=False)
    assert len(fits) == 5
    cache.write_text("{not json")
    assert S.region_mixtures(g, cls, peak, err, 4.0, cache_path=cache) == first
    assert real is None  # (the stage imports best_mixture where it runs)


def _counting(func, calls):
    def wrapped(x, e, comps, **kw):
        calls.append(x.size)
        return func(x, e, comps, **kw)
    return wrapped


def test_classification_change_keeps_the_method_independent_features(tmp_path, monkeypatch):
    """A re-run after ``classify.method`` changes keeps the classify stage's method-independent arrays (phase naming,
    anisotropy, ...: FeaturesCache) instead of computing them again, and its store equals, array for array, that of
    a first run with the new method; they are computed again where a stored one was rewritten since, where a setting
    they depend on changes, and with --force."""
    import shutil

    from _stores import store_arrays

    from sendmap.cli import main
    from sendmap.stages import classify as C

    d = tmp_path / "scan"
    assert main(["synth", str(d), "--scan-shape", "12", "16", "--seed", "5", "--quiet"]) == 0
    quiet = ["--no-progress", "--set", "output.figures=false"]
    assert main(["run", str(d / "config.yaml"), *quiet, "--set", f"output.dir={tmp_path / 'a'}"]) == 0
    assert main(["run", str(d / "config.yaml"), *quiet, "--set", f"output.dir={tmp_path / 'fresh'}",
                 "--set", "classify.method=gmm"]) == 0
    calls = []
    real = C.method_independent_features
    monkeypatch.setattr(C, "method_independent_features", lambda *a, **k: (calls.append(1), real(*a, **k)))

    def run(out, *settings):
        return main(["run", str(d / "config.yaml"), *quiet, "--set", f"output.dir={out}",
                     *[x for s in settings for x in ("--set", s)]])

    assert run(tmp_path / "a", "classify.method=gmm") == 0
    assert calls == []  # kept
    x, y = store_arrays(tmp_path / "a" / "sendmap.zarr"), store_arrays(tmp_path / "fresh" / "sendmap.zarr")
    assert set(x) == set(y) and len(x) > 30
    for k in x:
        assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k], equal_nan=True), k
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # a copied folder keeps them too
    assert run(tmp_path / "b", "classify.method=kmeans") == 0 and calls == []
    g = zarr.open_group(str(tmp_path / "b" / "sendmap.zarr"), mode="a")
    g["features/phase_score"][0, 0] = 42.0  # rewritten since: computed again (and restored)
    assert run(tmp_path / "b", "classify.method=rules") == 0 and calls == [1]
    assert np.asarray(zarr.open_group(str(tmp_path / "b" / "sendmap.zarr"))["features/phase_score"])[0, 0] != 42.0
    assert run(tmp_path / "b", "classify.method=rules", "classify.definitions.lif_spot_z=6.0") == 0 and calls == [1, 1]
    assert main(["run", str(d / "config.yaml"), *quiet, "--set", f"output.dir={tmp_path / 'b'}", "--force"]) == 0
    assert calls == [1, 1, 1]


def test_grain_minority_kept_where_its_inputs_are_the_same(tmp_path, monkeypatch):
    """The grain-minority test (method-independent) is read back from its cache file where the spot table, the grain
    evidence, the SRO peaks, the disk radius and the window are those of the run that wrote it, with the same
    positions as computing it; any changed input, ``reuse`` False, or an unreadable file computes it again."""
    from sendmap.stages import classify as C

    rng = np.random.default_rng(3)
    shape = (9, 11)
    n = 400
    pos = rng.integers(0, shape[0] * shape[1], n)
    q = rng.choice([0.403, 0.479], n) + rng.normal(0, 0.002, n)
    values = np.stack([q, rng.choice([0.0, 1.0, 2.0], n), rng.uniform(5, 100, n), np.zeros(n)], axis=1).astype(np.float32)
    ring = np.ones(n, bool)
    like = rng.random(shape) < 0.8
    peak = rng.random(shape) < 0.7
    spots = (pos, values, ring)
    truth = C.grain_minority_positions(spots, like, peak, 0.08, 5)
    assert truth.any() and not truth.all()  # (a test of something)
    calls = []
    real = C.grain_minority_positions
    monkeypatch.setattr(C, "grain_minority_positions", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    cache = tmp_path / "out" / C.MINORITY_CACHE
    first = C.kept_grain_minority(spots, like, peak, 0.08, 5, cache_path=cache)
    assert calls == [1] and cache.exists() and np.array_equal(first, truth)
    again = C.kept_grain_minority(spots, like, peak, 0.08, 5, cache_path=cache)
    assert calls == [1] and again.dtype == bool and np.array_equal(again, truth)
    peak2 = peak.copy()
    peak2[0, 0] = ~peak2[0, 0]
    changed = [((pos, values, ring), like, peak2, 0.08, 5), ((pos, values * 1.01, ring), like, peak, 0.08, 5),
               (spots, like, peak, 0.09, 5), (spots, like, peak, 0.08, 3)]
    for i, args in enumerate(changed):
        assert np.array_equal(C.kept_grain_minority(*args, cache_path=cache), real(*args)) and len(calls) == 2 + i
    C.kept_grain_minority(spots, like, peak, 0.08, 5, cache_path=cache)  # (the last write was another input's)
    assert len(calls) == 6
    C.kept_grain_minority(spots, like, peak, 0.08, 5, cache_path=cache, reuse=False)
    assert len(calls) == 7
    cache.write_text("{not json")
    assert np.array_equal(C.kept_grain_minority(spots, like, peak, 0.08, 5, cache_path=cache), truth)
    assert len(calls) == 8
