"""The scenario matrix of issue 18: named presets of the opt-in axes of ``sendmap synth``.

A cell of the matrix is one reproducible command::

    sendmap synth OUT --scenario matrix:<cell> --seed S [--dose 5000] [--detector 256] [--scan-shape 48 64]

The preset only sets the issue-18 axes (class spreads, LiF share, off-axis grains, scattered fraction,
boundary mixing) and the speckle M; the dose and the detector are the ordinary flags, crossed with the cells by
the sweep (``benchmarks/scenario_matrix.py``). Every setting lands in ``truth.json`` (``scenario``).
Explicit flags override the preset (a flag counts as explicit when its value differs from its default).

Each cell varies ONE axis away from today's generator (``legacy``), so a failure names its cause; ``all``
switches every axis on at once. The levels are the ranges issue 18 asks for (SCIENCE.md):

* ``spread``: class spreads as published (means 0.33 / 0.295 / 0.285, σ ≈ 0.02 1/Å: electrolyte and Type 2
  overlap in Q), half the variance a smooth variation across the layer, half position-to-position scatter;
* ``lif-faint`` / ``lif-dominant`` / ``lif-range``: LiF crystallites carrying 1–5 %, 20–40 %, 1–40 % of the
  scattered intensity, random zone axes, 15 % (faint: 30 %) of Type 2 positions with none excited;
* ``offaxis``: every Li/Cu grain off its zone axis (half a systematic row, half a single Friedel pair);
* ``thin`` / ``thick``: 10 % / 50 % of the electrons scattered (``thickness``: a smooth field 10–50 %);
* ``mixed``: patterns mixed along the beam within ± 6 nm of every layer boundary (12 nm mixing width);
* ``speckle3`` / ``speckle30``: partially developed speckle, M = 3 / 30 (``--speckle``).
"""
from __future__ import annotations

from ..errors import SendmapInputError

MATRIX_ALL = dict(class_spread="published", lif_share=(0.01, 0.40), lif_none_prob=0.15, off_axis=0.5,
                  scattered_fraction=(0.10, 0.50), mix_width_nm=12.0, speckle_m=10)

MATRIX_CELLS: dict[str, dict] = {
    # cell: keyword arguments of make_dataset (the SynthParams fields of the axes)
    "legacy": {},
    "spread": dict(class_spread="published"),
    "lif-faint": dict(lif_share=(0.01, 0.05), lif_none_prob=0.30),
    "lif-dominant": dict(lif_share=(0.20, 0.40), lif_none_prob=0.15),
    "lif-range": dict(lif_share=(0.01, 0.40), lif_none_prob=0.15),
    "offaxis": dict(off_axis=1.0),
    "thin": dict(scattered_fraction=(0.10, 0.10)),
    "thick": dict(scattered_fraction=(0.50, 0.50)),
    "thickness": dict(scattered_fraction=(0.10, 0.50)),
    "mixed": dict(mix_width_nm=12.0),
    "speckle3": dict(speckle_m=3),
    "speckle30": dict(speckle_m=30),
    "all": MATRIX_ALL,
}
"""The cells. Mixing width 12 nm: a boundary inclined by ≈ 10° through a 70 nm lamella (a typical cryo-FIB
lamella thickness) is crossed over 70·tan 10° ≈ 12 nm, i.e. three 4 nm probe steps. ``all`` uses M = 10
(normalised variance 0.1, the value at which issue 18 saw 16–23 % of Type 1/electrolyte positions mislabelled)."""

# make_dataset keyword → (argparse dest, default of the flag): used to let explicit flags override a preset
_FLAG_OF = {
    "class_spread": ("class_spread", None),
    "spread_smooth_share": ("spread_smooth_share", 0.5),
    "lif_share": ("lif_share", None),
    "lif_none_prob": ("lif_none", None),
    "off_axis": ("off_axis", 0.0),
    "scattered_fraction": ("scattered_fraction", None),
    "mix_width_nm": ("mix_width", 0.0),
    "speckle_m": ("speckle", 0),
}


def scenario_settings(name: str) -> dict:
    """The make_dataset keyword arguments of scenario ``name`` ("matrix:<cell>" or "<cell>")."""
    cell = name.split(":", 1)[1] if name.startswith("matrix:") else name
    if cell not in MATRIX_CELLS:
        raise SendmapInputError(
            f"sendmap synth: unknown --scenario {name!r}; the scenario matrix has the cells "
            + ", ".join(f"matrix:{c}" for c in MATRIX_CELLS) + " (sendmap/synth/scenario.py)")
    return dict(MATRIX_CELLS[cell])


def apply_scenario(args) -> None:
    """Fill the axis flags of parsed ``sendmap synth`` arguments from ``args.scenario`` (in place); a flag
    whose value differs from its default was given explicitly and is kept."""
    name = getattr(args, "scenario", None)
    if not name:
        return
    for key, value in scenario_settings(name).items():
        dest, default = _FLAG_OF[key]
        if getattr(args, dest, default) == default:
            setattr(args, dest, value)


def parse_range(text: str, what: str) -> tuple[float, float]:
    """'LO:HI' or 'V' (→ (V, V)) as two floats; bad text is a SendmapInputError naming the flag."""
    try:
        parts = [float(v) for v in str(text).split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise SendmapInputError(f"sendmap synth: {what} takes LO:HI (two numbers) or one number, got {text!r}")
    return parts[0], parts[1]
