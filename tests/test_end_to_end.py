"""`sendmap synth` then `sendmap run`: accuracy against ground truth, stage reuse, schedulers."""
import json

import numpy as np
import pytest
import zarr

from _stores import assert_same_arrays
from sendmap.cli import main
from sendmap.evaluate import evaluate


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    """A 20 × 30 scan of 128² Merlin frames at 2 × 10⁴ e⁻/pattern, drift and a 1.5 % ellipse, run once."""
    d = tmp_path_factory.mktemp("e2e")
    assert main(["synth", str(d), "--scan-shape", "20", "30", "--seed", "11", "--quiet"]) == 0
    assert main(["run", str(d / "config.yaml"), "--no-progress"]) == 0
    return d


def test_accuracy_against_truth(synth_run):
    r = evaluate(synth_run / "results", synth_run)
    assert r["class_accuracy"] >= 0.90, r
    assert r["peak_mae"] <= 0.010, r
    assert abs(r["peak_bias"]) <= 0.002, r
    assert 0.55 <= r["peak_coverage_1sigma"] <= 0.80, r  # ±1σ holds ≈68 %; ~300 positions: ±0.03 binomial
    assert r["crystal_with_peak"] == 0


def test_store_and_summary_follow_contract(synth_run):
    out = synth_run / "results"
    g = zarr.open_group(str(out / "sendmap.zarr"), mode="r")
    for key in ("sendmap_version", "config", "input", "calibration", "created"):
        assert key in g.attrs
    assert g.attrs["status"] == "complete"
    ry, rx = 20, 30
    nq = g["profiles/q"].shape[0]
    assert g["calibration/origin"].shape == (ry, rx, 2)
    assert g["calibration/mask"].dtype == bool
    for name in ("profiles/mean", "profiles/sem", "profiles/iqn"):
        assert g[name].shape == (ry, rx, nq)
    assert g["profiles/iqn"].attrs["n"] == 1
    assert g["maps/class"].attrs["class_names"][:4] == ["crystal", "sei_type1", "sei_type2", "electrolyte"]
    s = json.loads((out / "summary.json").read_text())
    assert {"classes", "calibration", "timing_s"} <= set(s)
    assert s["dose"]["electrons_per_pattern"] == 20000
    ell = s["calibration"]["ellipse"]
    # counting-noise limited on 600 frames: the fit reports its own 1-σ, and must be within 3σ of the truth
    assert abs(ell["ratio"] - 1.015) < max(3 * ell["ratio_err"], 0.002) and ell["ratio_err"] < 0.006
    for c in ("sei_type1", "electrolyte"):
        assert {"count", "peak_q_mean", "peak_q_std", "fit_mu", "fit_sigma"} <= set(s["classes"][c])
    truth = np.load(synth_run / "truth.npz")
    origin = np.asarray(g["calibration/origin"])
    assert np.abs(origin - truth["centre"]).max() < 0.1
    for f in ("peak_map", "class_map", "histograms", "class_profiles", "overview"):
        assert (out / "figures" / f"{f}.png").stat().st_size > 10_000
        assert (out / "figures" / f"{f}.pdf").read_bytes()[:4] == b"%PDF"
    assert (out / "tables" / "classes.csv").read_text().startswith("class,")
    # class probabilities (issue 18): every position with a class has them, and they sum to 1
    p = np.asarray(g["maps/class_probability"])
    cls = np.asarray(g["maps/class"])
    assert p.shape == (ry, rx, 4) and np.allclose(p[cls < 4].sum(-1), 1, atol=1e-4)
    conf = np.asarray(g["maps/class_confidence"])
    assert np.allclose(conf[cls < 4], np.take_along_axis(p, np.clip(cls, 0, 3)[..., None], -1)[..., 0][cls < 4])
    # per region, the deconvolved mixture: each component's mean lies on a true class mean of that region
    true_cls, true_q = truth["class_map"], truth["peak_q"]
    names = [str(n) for n in truth["class_names"]]
    region = np.asarray(g["statistics/region"])
    assert s["regions"] and (out / "tables" / "regions.csv").read_text().startswith("region,")
    for reg in s["regions"]:
        inside = region == reg["region"]
        means = [float(np.nanmean(true_q[inside & (true_cls == k)])) for k in np.unique(true_cls[inside])
                 if names[k] != "crystal" and (inside & (true_cls == k)).sum() >= 20]
        for m in reg["mixture"]["mean"]:
            assert min(abs(m - t) for t in means) < 0.006, (reg, means)


def test_rerun_reuses_and_classification_change_recomputes_only_later_stages(synth_run, capsys):
    cfg = str(synth_run / "config.yaml")
    before = zarr.open_group(str(synth_run / "results" / "sendmap.zarr"), mode="r").attrs["stages"]
    assert main(["run", cfg, "--no-progress"]) == 0
    s = json.loads((synth_run / "results" / "summary.json").read_text())
    assert s["reused_stages"] == ["ingest", "calibrate", "profiles", "peaks", "classify", "statistics", "report"]
    assert main(["run", cfg, "--no-progress", "--set", "classify.definitions.lif_spot_z=7"]) == 0
    s = json.loads((synth_run / "results" / "summary.json").read_text())
    assert s["reused_stages"] == ["ingest", "calibrate", "profiles", "peaks"]
    after = zarr.open_group(str(synth_run / "results" / "sendmap.zarr"), mode="r").attrs["stages"]
    assert after["profiles"] == before["profiles"]
    assert after["classify"]["config"]["classify"]["definitions"]["lif_spot_z"] == 7


def test_figure_helpers_start_early_only_for_a_likely_rerun(synth_run, monkeypatch, capsys):
    """``sendmap run`` starts the figure helpers before the config is validated where the output's store is complete
    (its folder read from the YAML and --set alone), keeps them where the validated config confirms a re-run (another
    config), and ends them otherwise; the pipeline uses them where classification is the first stage to run, and ends
    them unused (starting others when classification starts) where an earlier stage must run."""
    from sendmap import cli
    from sendmap.report import build

    pre, early, sent, closed = [], [], [], []

    class Recorded(build.FigureHelpers):
        def send(self, *a, **k):
            sent.append(self)
            return super().send(*a, **k)

        def close(self):
            closed.append(self)
            return super().close()

    real_pre, real_early = cli._early_figure_helpers, build.start_figure_helpers_for_rerun
    monkeypatch.setattr(build, "FigureHelpers", Recorded)
    monkeypatch.setattr(cli, "_early_figure_helpers", lambda args: pre.append(real_pre(args)) or pre[-1])
    monkeypatch.setattr(build, "start_figure_helpers_for_rerun", lambda *a, **k: early.append(real_early(*a, **k))
                        or early[-1])
    cfg = str(synth_run / "config.yaml")
    run = ["run", cfg, "--no-progress", "--set", "output.dir=early_helpers"]

    def summary():
        return json.loads((synth_run / "early_helpers" / "summary.json").read_text())

    assert main(run) == 0 and pre == [None] and early == [None] and len(sent) == 1  # a first run: at classify
    assert main(run) == 0 and pre[-1] is not None and pre[-1] in closed  # the same config: ended at once ...
    assert early[-1] is None and len(sent) == 1  # ... nothing to draw
    # (a change that redraws figures: the histograms' bins)
    assert main(run + ["--set", "statistics.bin_width=0.003"]) == 0
    assert pre[-1] is not None and sent[-1] is pre[-1] and len(sent) == 2 and len(early) == 2  # (kept)
    assert summary()["reused_stages"] == ["ingest", "calibrate", "profiles", "peaks", "classify"]
    assert main(run + ["--set", "statistics.bin_width=0.003", "--set", "profiles.n=2"]) == 0
    assert pre[-1] is not None and pre[-1] not in sent and pre[-1] in closed  # ended unused ...
    assert len(sent) == 3 and sent[-1] is not pre[-1]  # ... and others drew the figures
    assert summary()["reused_stages"] == ["ingest", "calibrate"]
    assert main(run + ["--force"]) == 0 and pre[-1] is None and early[-1] is None
    assert main(run + ["--set", "output.figures=false", "--set", "statistics.bin_width=0.004"]) == 0
    assert pre[-1] is None  # (whether figures are drawn at all is left to the validated config)
    assert all(not h.procs for h in sent + closed)  # no helper process left running


def test_report_redraws_only_figures_whose_inputs_changed(synth_run, tmp_path):
    """A classification change redraws the figures drawn from classes; the virtual images (drawn from the
    profiles alone) are kept, byte for byte; ``reuse=False`` (``--force``) and a missing file redraw; a figure
    being redrawn is dropped from the manifest first, so a killed report never leaves a new file under an old
    digest."""
    import json

    from sendmap.report import build

    g = zarr.open_group(str(synth_run / "results" / "sendmap.zarr"), mode="r")
    out = tmp_path / "r"
    first = build.write_figures(g, out, 1, processes=1)
    fdir = out / "figures"
    manifest = json.loads((fdir / build.FIGURE_MANIFEST).read_text())
    assert sorted(manifest) == sorted({p.stem for p in first}) and len(first) == 12
    mtimes = {p.name: p.stat().st_mtime_ns for p in first}
    again = build.write_figures(g, out, 1, processes=1)  # nothing changed: nothing drawn
    assert sorted(p.name for p in again) == sorted(mtimes)
    assert {p.name: p.stat().st_mtime_ns for p in again} == mtimes

    class Changed:  # the same store with one position's class changed, as after a threshold change
        def __init__(self, grp):
            self.grp, self.attrs = grp, grp.attrs

        def __contains__(self, key):
            return key in self.grp

        def __getitem__(self, key):
            a = np.asarray(self.grp[key])
            if key == "maps/class":
                a = a.copy()
                a[0, 0] = (a[0, 0] + 1) % 4
            return a

    drawn = []
    real = build.render_figures
    build_render = lambda specs, *a, **k: drawn.extend(s[0] for s in specs) or real(specs, *a, **k)  # noqa: E731
    try:
        build.render_figures = build_render
        build.write_figures(Changed(g), out, 1, processes=1)
        assert "virtual_images" not in drawn and {"class_map", "overview", "histograms"} <= set(drawn)
        assert (fdir / "virtual_images.png").stat().st_mtime_ns == mtimes["virtual_images.png"]
        drawn.clear()
        (fdir / "peak_map.pdf").unlink()
        build.write_figures(Changed(g), out, 1, processes=1)
        assert drawn == ["peak_map"]
        drawn.clear()
        build.write_figures(Changed(g), out, 1, processes=1, reuse=False)
        assert len(drawn) == 6

        def killed(specs, *a, **k):
            raise KeyboardInterrupt
        build.render_figures = killed
        with pytest.raises(KeyboardInterrupt):
            build.write_figures(g, out, 1, processes=1)  # back to the original classes: these figures must redraw
        left = json.loads((fdir / build.FIGURE_MANIFEST).read_text())
        assert "class_map" not in left and "virtual_images" in left
    finally:
        build.render_figures = real


def test_report_writes_tables_while_the_helpers_draw(synth_run, tmp_path):
    """``meanwhile`` (the report's tables) runs exactly once: after the helper processes have their figures and
    before this process waits for them; first where everything is drawn here; also where nothing is redrawn."""
    from sendmap.report import build

    g = zarr.open_group(str(synth_run / "results" / "sendmap.zarr"), mode="r")
    events = []

    class Helpers:  # stands in for FigureHelpers: records the order of send, meanwhile and collect
        def __len__(self):
            return 2

        def send(self, groups, fdir, formats):
            events.append(("send", sorted(s[0] for grp in groups for s in grp)))

        def collect(self):
            events.append("collect")
            return []

        def close(self):
            pass

    out = tmp_path / "r"
    build.write_figures(g, out, 1, helpers=Helpers(), meanwhile=lambda: events.append("tables"))
    assert [e if isinstance(e, str) else e[0] for e in events] == ["send", "tables", "collect"]
    assert len(events[0][1]) == 7  # the six figures, the overview as two (PNG, PDF: build.SPLIT_FIGURES)
    events.clear()
    build.write_figures(g, out, 1, processes=1, reuse=False, meanwhile=lambda: events.append("tables"))
    assert events == ["tables"] and len(list((out / "figures").glob("*.png"))) == 6
    events.clear()
    build.write_figures(g, out, 1, processes=1, meanwhile=lambda: events.append("tables"))  # all kept
    assert events == ["tables"]
    groups = build._share([(name, None, (), {}) for name in
                           ("overview", "peak_map", "class_map", "histograms", "class_profiles", "virtual_images")], 2)
    assert sorted(len(grp) for grp in groups) == [1, 5] and [s[0] for s in min(groups, key=len)] == ["overview"]
    # split by format, the overview's PNG and PDF go to different drawers, each with some of the others
    groups = build._share(build._split_formats([(name, None, (), {}) for name in
                                                ("overview", "class_map", "histograms", "class_profiles")],
                                               ("png", "pdf")), 2)
    assert sorted([s[4] for s in grp if s[0] == "overview"] for grp in groups) == [[("pdf",)], [("png",)]]
    assert sorted(len(grp) for grp in groups) == [2, 3]


def test_input_file_is_not_modified(synth_run):
    from sendmap.io import fingerprint

    mib = synth_run / "synth.mib"
    fp = fingerprint(mib)
    mtime = mib.stat().st_mtime_ns
    assert main(["run", str(synth_run / "config.yaml"), "--no-progress", "--force"]) == 0
    assert fingerprint(mib) == fp and mib.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("scheduler", ["processes", "distributed"])
def test_schedulers_give_identical_results(synth_run, scheduler):
    out = f"results_{scheduler}"
    assert main(["run", str(synth_run / "config.yaml"), "--no-progress", "--set", f"compute.scheduler={scheduler}",
                 "--set", "compute.n_workers=2", "--set", f"output.dir={out}", "--set", "output.figures=false"]) == 0
    a = zarr.open_group(str(synth_run / "results" / "sendmap.zarr"), mode="r")
    b = zarr.open_group(str(synth_run / out / "sendmap.zarr"), mode="r")
    keys = [p for p, _ in a.arrays()] + [f"{gn}/{p}" for gn, grp in a.groups() for p, _ in grp.arrays()]
    assert len(keys) > 30 and {"data_sparse/index", "data_sparse/value", "profiles/iqn", "maps/class"} <= set(keys)
    # every array of the store (floats within _stores.KERNEL_RTOL: the workers load the kernels from numba's cache,
    # which this process may have compiled itself)
    assert_same_arrays(a, b, keys)


def test_info_describes_file_and_store(synth_run, capsys):
    assert main(["info", str(synth_run / "synth.mib")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "mib" and d["scan_shape"] == [20, 30] and d["frame_shape"] == [128, 128]
    assert main(["info", str(synth_run / "results")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["status"] == "complete" and d["arrays"]["maps/class"]["shape"] == [20, 30]
    assert set(d["stages"]) >= {"ingest", "profiles", "report"}


def test_virtual_images_sum_the_counts_around_each_centre(synth_run):
    """features/virtual_bf: counts inside the probe disk around each position's own centre; virtual_adf: in the
    annulus [2 disk radii, q_max). Together with the gap between them they cannot exceed the frame's counts."""
    g = zarr.open_group(str(synth_run / "results" / "sendmap.zarr"), mode="r")
    bf = np.asarray(g["features/virtual_bf"])
    adf = np.asarray(g["features/virtual_adf"])
    total = np.asarray(g["ingest/total_counts"])
    assert bf.shape == adf.shape == total.shape
    assert np.all(bf > 0) and np.all(adf > 0)
    assert np.all(bf + adf <= total * (1 + 1e-9))
    # the same sums done plainly, pixel centres within the stored Q ranges around the fitted centre (no sub-pixels,
    # no ellipse): agree to the ~1 % that edge pixels make
    from sendmap.engine.data import read_frames
    data = read_frames(synth_run / "results" / "sendmap.zarr").astype(np.float64)
    origin = np.asarray(g["calibration/origin"])
    mask = np.asarray(g["calibration/mask"])
    qpx = g.attrs["calibration"]["q_pixel_size"]
    r_q = g["features/virtual_bf"].attrs["q_range"][1]
    lo, hi = g["features/virtual_adf"].attrs["q_range"]
    yy, xx = np.mgrid[:data.shape[2], :data.shape[3]]
    q = np.hypot(yy - origin[..., 0, None, None], xx - origin[..., 1, None, None]) * qpx
    ref_bf = (data * ((q < r_q) & mask)).sum(axis=(2, 3))
    ref_adf = (data * ((q >= lo) & (q < hi) & mask)).sum(axis=(2, 3))
    assert abs(np.median(bf / ref_bf) - 1) < 0.02
    assert abs(np.median(adf / ref_adf) - 1) < 0.02


def test_figures_drawn_with_a_helper_process_are_the_same_bytes(synth_run, tmp_path, monkeypatch):
    """The report's helper process draws some figures: the files equal those drawn in one process, and a helper
    that cannot start only costs time (its figures are drawn here, with a warning)."""
    import sys

    from sendmap.report.build import write_figures

    g = zarr.open_group(str(synth_run / "results" / "sendmap.zarr"), mode="r")
    one = write_figures(g, tmp_path / "one", 1, processes=1)
    two = write_figures(g, tmp_path / "two", 1, processes=2)
    assert sorted(p.name for p in one) == sorted(p.name for p in two) and len(one) == 12
    for p in one:
        assert p.read_bytes() == (tmp_path / "two" / "figures" / p.name).read_bytes(), p.name
    # helpers started early (as the pipeline does when classification starts) draw them all, the same bytes
    from sendmap.report.build import FigureHelpers

    early = write_figures(g, tmp_path / "early", 1, helpers=FigureHelpers(2))
    assert sorted(p.name for p in early) == sorted(p.name for p in one)
    for p in one:
        assert p.read_bytes() == (tmp_path / "early" / "figures" / p.name).read_bytes(), p.name
    # the classify stage's maps sent first (send_early_figures, as the pipeline does when classify ends): drawn
    # once, the same bytes and manifest, and the report sends only the other figures
    from sendmap.report import build

    helpers, sent = FigureHelpers(2), []
    real_send = helpers.send
    helpers.send = lambda groups, *a: sent.append(sorted(s[0] for grp in groups for s in grp)) or real_send(groups, *a)
    assert build.send_early_figures(g, tmp_path / "first", ("png", "pdf"), helpers) == ["peak_map", "class_map"]
    first = write_figures(g, tmp_path / "first", 1, helpers=helpers)
    assert sent and not {"peak_map", "class_map"} & set(sent[0]) and len(sent[0]) == 5
    assert sorted(p.name for p in first) == sorted(p.name for p in one)
    for p in one:
        assert p.read_bytes() == (tmp_path / "first" / "figures" / p.name).read_bytes(), p.name
    manifest = (tmp_path / "one" / "figures" / build.FIGURE_MANIFEST).read_text()
    assert (tmp_path / "first" / "figures" / build.FIGURE_MANIFEST).read_text() == manifest
    # the other figures sent when statistics ends (send_report_figures, as the pipeline does): the report then only
    # collects them (one send), the same bytes and manifest
    from types import SimpleNamespace as NS

    cfg = NS(output=NS(figures=True, formats=["png", "pdf"]), profiles=NS(n=1), peaks=NS(window=None))
    helpers, sent = FigureHelpers(2), []
    real_send = helpers.send
    helpers.send = lambda groups, *a: sent.append(sorted(s[0] for grp in groups for s in grp)) or real_send(groups, *a)
    assert build.send_early_figures(g, tmp_path / "six", ("png", "pdf"), helpers) == ["peak_map", "class_map"]
    assert len(build.send_report_figures(g, tmp_path / "six", cfg, helpers)) == 4 and len(sent) == 1
    six = write_figures(g, tmp_path / "six", 1, helpers=helpers)
    assert len(sent) == 1 and sorted(p.name for p in six) == sorted(p.name for p in one)
    for p in one:
        assert p.read_bytes() == (tmp_path / "six" / "figures" / p.name).read_bytes(), p.name
    assert (tmp_path / "six" / "figures" / build.FIGURE_MANIFEST).read_text() == manifest
    unused = FigureHelpers(2, warm=False)  # drawn already, with the same inputs: nothing sent
    assert build.send_report_figures(g, tmp_path / "six", cfg, unused) == [] and unused.report is None
    helpers = FigureHelpers(2)  # sent for other settings than the report's: drawn again by the report, all of them
    assert len(build.send_report_figures(g, tmp_path / "seven", cfg, helpers)) == 6
    seven = write_figures(g, tmp_path / "seven", 2, helpers=helpers)
    assert sorted(p.name for p in seven) == sorted(p.name for p in one) and not helpers._sent
    assert build.send_early_figures(g, tmp_path / "first", ("png", "pdf"), unused) == [] and not unused.early
    unused.close()
    # a figure that fails in a drawer (on Linux: a child forked from the helper) comes back as the helper's error
    helpers = FigureHelpers(2, warm=False)
    helpers.send([[], [("broken", "no_such_plot", (), {})]], str(tmp_path / "broken"), ("png",))
    with pytest.raises(RuntimeError, match="no_such_plot"):
        helpers.collect()
    helpers.close()
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.warns(UserWarning, match="figure helper process failed"):
        three = write_figures(g, tmp_path / "three", 1, processes=2)
    assert sorted(p.name for p in three) == sorted(p.name for p in one)
    with pytest.warns(UserWarning, match="figure helper process failed"):
        four = write_figures(g, tmp_path / "four", 1, helpers=FigureHelpers(2))
    assert sorted(p.name for p in four) == sorted(p.name for p in one)
    helpers = FigureHelpers(2)  # failed after figures were sent early: those are drawn here too
    assert build.send_early_figures(g, tmp_path / "five", ("png", "pdf"), helpers) == ["peak_map", "class_map"]
    with pytest.warns(UserWarning, match="figure helper process failed"):
        five = write_figures(g, tmp_path / "five", 1, helpers=helpers)
    assert sorted(p.name for p in five) == sorted(p.name for p in one)
    assert (tmp_path / "five" / "figures" / build.FIGURE_MANIFEST).read_text() == manifest
