"""Phase library: kinematic electron-diffraction reflections of the phases met at Li-metal battery interfaces.

Size: the phase library's literature data (lattice, atoms per phase) beside the kinematic computation that reads it;
the phase table is the piece to move out if it grows.

Each :class:`Phase` is defined from the literature by its space group, lattice parameters and the atoms
of the asymmetric unit; reflections are *computed*, never tabulated.  Space-group operations, systematic
absences and the electron scattering factors come from `gemmi <https://gemmi.readthedocs.io>`_
(MPL-2.0):

* symmetry: ``gemmi.SpaceGroup(...).operations()`` expands the asymmetric unit to the full cell and
  gives the Laue-class equivalents of every (hkl);
* scattering factors: ``gemmi.Element(el).c4322`` = International Tables Vol. C Table 4.3.2.2, the
  5-Gaussian fits of Peng, Ren, Dudarev & Whelan, Acta Cryst. A52, 257 (1996), in Å:
  f(s) = Σ a_i exp(-b_i s²) with s = sin θ / λ = 1 / (2 d).

Conventions (the same as ``../shared/reference/sei_reflections.csv``):

* Q = q = 1/d in 1/Å (py4DSTEM convention, no 2π).
* F(hkl) = Σ_j f_j(s) exp(-B s²) exp(2πi h·x_j) over all atoms of the unit cell, with one isotropic
  Debye-Waller factor B = 0.5 Å² for every atom (:data:`DEFAULT_B_ISO_ANGSTROM2`).  The reference CSV was
  computed with exactly this B: the ratio of its |F|² to the B = 0 values is exp(-2·0.5·s²) for every
  reflection checked (Li, Cu, LiF; ln-ratio / 2s² = 0.500 ± 0.0005).  Pass ``b_iso_angstrom2=0`` for a
  static lattice.
* ``mean_f2`` is kinematic |F|² in Å² (electron scattering amplitudes in Å, no relativistic factor and
  no 1/V_cell), averaged over the reflections merged into one ring.
* ``multiplicity`` counts every (hkl) of the form in the full sphere (Friedel mates included: cubic
  {111} = 8, {200} = 6).  Forms whose d agree to better than :data:`D_MERGE_TOLERANCE_ANGSTROM`
  (2e-4 Å) are merged into one ring (multiplicities add, ``mean_f2`` is the multiplicity-weighted mean,
  the representative index is the simplest one, the others go to ``Reflection.overlaps``, and d is
  that of the form with the largest d).  This is the
  reference CSV's ``overlap_nonequivalent`` rule (its merged pairs differ by ≤ 1.8e-4 Å, its closest
  unmerged pair by 2.0e-4 Å).
* ``intensity`` = multiplicity · mean|F|², normalised so the strongest ring with Q ≤ max(q_max, 1 Å⁻¹)
  is 100 (the CSV column ``I_mF2``).  The CSV's other two columns are this times d (``I_ring_mF2d``:
  a ring's integrated intensity per unit length of Q) and times d² (``I_azav_mF2d2``: the azimuthal
  average), each renormalised to 100; compute them from ``intensity`` and ``d_angstrom`` if needed.
* Extinct reflections are dropped: space-group absences (gemmi), and reflections extinct only through
  special positions (e.g. Cu2O 122), i.e. m|F|² < 1e-6 of the strongest ring (:data:`EXTINCTION_REL`).

The reproduction of the reference CSV (every phase in it, Q < 1 Å⁻¹) is exact to its printed rounding:
the same reflections, equal multiplicities, ``mean_F2`` and ``I_mF2`` within rounding (≤ 0.005 on the
0-100 scale), d within 5e-5 Å except for 7 rows where the CSV itself is off its own cell by ≤ 2.4e-4 Å;
see ``tests/test_phases.py``.

Example
-------
>>> lif = get_phase("LiF")
>>> [(r.hkl, round(r.q_inv_angstrom, 4), r.multiplicity, round(r.intensity, 2)) for r in lif.reflections(0.75)]
[((1, 1, 1), 0.4301, 8, 18.91), ((2, 0, 0), 0.4966, 6, 100.0), ((2, 2, 0), 0.7024, 12, 91.94)]
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Iterable

import gemmi
import numpy as np

__all__ = [
    "DEFAULT_B_ISO_ANGSTROM2",
    "D_MERGE_TOLERANCE_ANGSTROM",
    "EXTINCTION_REL",
    "PHASES",
    "Phase",
    "Reflection",
    "format_hkl",
    "get_phase",
    "reference_ticks",
]

#: Isotropic Debye-Waller factor B (Å²) applied to every atom; the value the reference CSV used.
DEFAULT_B_ISO_ANGSTROM2 = 0.5
#: Forms whose d-spacings differ by less than this (Å) are merged into one ring.
D_MERGE_TOLERANCE_ANGSTROM = 2e-4
#: Rings with m|F|² below this fraction of the strongest ring are treated as extinct.
EXTINCTION_REL = 1e-6
#: Intensities are normalised over Q ≤ max(q_max, this) so they do not depend on a small q_max (1/Å).
NORMALISATION_Q_MIN_INV_ANGSTROM = 1.0


@dataclass(frozen=True)
class Reflection:
    """One powder ring (a form {hkl}, possibly merged with non-equivalent forms at the same d).

    Attributes
    ----------
    hkl : representative Miller index (h ≥ k ≥ l ≥ 0 for cubic, k ≥ 0 and l ≥ 0 for monoclinic, ...).
    d_angstrom : interplanar spacing d (Å).
    q_inv_angstrom : Q = 1/d (1/Å).
    multiplicity : number of (hkl) in the ring (all merged forms, Friedel mates included).
    mean_f2 : multiplicity-weighted mean kinematic |F|² (Å², electron scattering amplitudes in Å).
    intensity : multiplicity · mean_f2, normalised so the strongest ring of the phase is 100.
    overlaps : representatives of the other, non-equivalent forms merged into this ring (usually ``()``).
    """

    hkl: tuple[int, int, int]
    d_angstrom: float
    q_inv_angstrom: float
    multiplicity: int
    mean_f2: float
    intensity: float
    overlaps: tuple[tuple[int, int, int], ...] = ()

    @property
    def label(self) -> str:
        """``hkl`` as text, e.g. ``"-111"`` (space-separated when an index has two digits)."""
        return format_hkl(self.hkl)


def format_hkl(hkl: Iterable[int]) -> str:
    """Miller indices as compact text: ``(-1, 1, 1) -> "-111"``; ``(1, 10, 0) -> "1 10 0"``.

    >>> format_hkl((2, 0, 0)), format_hkl((-2, 0, 2)), format_hkl((1, 10, 1))
    ('200', '-202', '1 10 1')
    """
    idx = [int(i) for i in hkl]
    sep = " " if any(abs(i) >= 10 for i in idx) else ""
    return sep.join(str(i) for i in idx)


@dataclass(frozen=True)
class Phase:
    """A crystalline phase: space group, lattice and asymmetric unit (all from the literature).

    Attributes
    ----------
    name : display name, as in the reference CSV ``phase`` column (e.g. ``"Li (bcc)"``, ``"LiF"``).
    space_group : Hermann-Mauguin symbol understood by ``gemmi.SpaceGroup``, with the setting / origin
        choice the coordinates refer to (e.g. ``"P n -3 m:2"``, ``"C 1 2/c 1"``, ``"P m n b"``).
    lattice : a, b, c (Å), alpha, beta, gamma (degrees).
    atoms : asymmetric unit: ``(element, (x, y, z))`` in fractional coordinates, full occupancy.
    source : literature reference for the lattice and coordinates.
    """

    name: str
    space_group: str
    lattice: tuple[float, float, float, float, float, float]
    atoms: tuple[tuple[str, tuple[float, float, float]], ...]
    source: str

    def __post_init__(self) -> None:
        gemmi.SpaceGroup(self.space_group)  # raises ValueError for an unknown symbol
        # normalise to hashable tuples of floats (phases are cache keys)
        object.__setattr__(self, "lattice", tuple(float(v) for v in self.lattice))
        object.__setattr__(
            self, "atoms", tuple((str(el), tuple(float(v) for v in xyz)) for el, xyz in self.atoms)
        )
        if len(self.lattice) != 6 or min(self.lattice[:3]) <= 0:
            raise ValueError(f"{self.name}: lattice must be (a, b, c, alpha, beta, gamma) with a, b, c > 0")
        for el, xyz in self.atoms:
            gemmi.Element(el)
            if len(xyz) != 3:
                raise ValueError(f"{self.name}: atom {el} needs 3 fractional coordinates")

    # -- derived geometry --------------------------------------------------------------------------
    @property
    def space_group_number(self) -> int:
        """International Tables number of the space group (e.g. 225)."""
        return gemmi.SpaceGroup(self.space_group).number

    @property
    def space_group_label(self) -> str:
        """Short label as in the reference CSV, e.g. ``"Fm-3m (225)"``."""
        sg = gemmi.SpaceGroup(self.space_group)
        return f"{sg.short_name()} ({sg.number})"

    def d_spacing(self, hkl: Iterable[int]) -> float:
        """Interplanar spacing d (Å) of (hkl).

        >>> round(get_phase("cu").d_spacing((1, 1, 1)), 4)
        2.0871
        """
        h = np.asarray(list(hkl), dtype=float)
        q2 = float(h @ _geometry(self.lattice)[2] @ h)
        if q2 <= 0:
            raise ValueError("(000) has no d-spacing")
        return 1.0 / math.sqrt(q2)

    # -- main API ------------------------------------------------------------------------------------
    def reflections(
        self,
        q_max_inv_angstrom: float = 1.0,
        min_intensity: float = 0.0,
        *,
        b_iso_angstrom2: float = DEFAULT_B_ISO_ANGSTROM2,
    ) -> list[Reflection]:
        """Powder rings up to ``q_max_inv_angstrom`` (Q = 1/d, 1/Å), sorted by increasing Q.

        Parameters
        ----------
        q_max_inv_angstrom : largest Q = 1/d (1/Å) to list.
        min_intensity : drop rings whose normalised ``intensity`` (0-100) is below this.
        b_iso_angstrom2 : isotropic Debye-Waller B (Å²) of every atom; 0.5 reproduces the reference CSV.

        Returns
        -------
        list of :class:`Reflection`; extinct reflections are never listed.

        >>> [(r.label, round(r.q_inv_angstrom, 3), r.multiplicity) for r in get_phase("li").reflections(0.6)]
        [('110', 0.403, 12), ('200', 0.57, 6)]
        >>> [r.label for r in get_phase("Cu").reflections(1.0, min_intensity=50)]
        ['111', '200', '220', '311']
        """
        q_max = float(q_max_inv_angstrom)
        if not q_max > 0:
            raise ValueError(f"q_max_inv_angstrom must be positive, got {q_max_inv_angstrom}")
        rings = _rings(self, max(q_max, NORMALISATION_Q_MIN_INV_ANGSTROM), float(b_iso_angstrom2))
        return [r for r in rings if r.q_inv_angstrom <= q_max + 1e-12 and r.intensity >= min_intensity]

    def g_vectors(
        self,
        zone_axis: tuple[int, int, int],
        q_max_inv_angstrom: float,
        *,
        b_iso_angstrom2: float = DEFAULT_B_ISO_ANGSTROM2,
    ) -> np.ndarray:
        """Bragg spots of a grain viewed down the zone axis [uvw]: the zero-order Laue zone (ZOLZ).

        Every individual reflection g = (hkl) with h·u + k·v + l·w = 0 and 0 < |g| ≤ q_max is listed
        (g and -g both; no merging, no multiplicities), systematically absent / extinct ones excluded.

        Frame convention (right-handed, orthonormal, 1/Å):

        * ẑ is the unit vector along the real-space direction [uvw] = u·a + v·b + w·c (the zone axis,
          pointing from the specimen towards the electron source; the beam travels along -ẑ);
        * x̂ is along the shortest ZOLZ vector (ties: the largest (h, k, l) in lexicographic order),
          so e.g. Cu [001] has (2, 0, 0) on +x and (0, 2, 0) on +y;
        * ŷ = ẑ × x̂.

        A synthetic-data generator typically rotates (gx, gy) by a random in-plane angle per grain
        and draws each spot as a probe-sized disk of weight |F|².

        Returns
        -------
        ndarray, shape (N, 6), float: columns ``gx, gy`` (1/Å), ``|F|²`` (Å², same units and B as
        :meth:`reflections`), ``h, k, l``; sorted by |g| then angle.  Empty (0, 6) if no spot.

        >>> g = get_phase("cu").g_vectors((0, 0, 1), 0.8)
        >>> sorted({round(float(np.hypot(x, y)), 4) for x, y in g[:, :2]}), len(g)
        ([0.5533, 0.7824], 8)
        """
        uvw = np.asarray(zone_axis, dtype=float)
        if uvw.shape != (3,) or not np.any(uvw):
            raise ValueError(f"zone_axis must be three integers, not all zero; got {zone_axis}")
        q_max = float(q_max_inv_angstrom)
        if not q_max > 0:
            raise ValueError(f"q_max_inv_angstrom must be positive, got {q_max_inv_angstrom}")
        uvw_i = np.asarray(zone_axis, dtype=np.int64)
        ops = gemmi.SpaceGroup(self.space_group).operations()
        hkl = _hkl_sphere(self.lattice, q_max)
        hkl = hkl[hkl @ uvw_i == 0]
        if len(hkl):
            hkl = hkl[~np.asarray(ops.systematic_absences(hkl), dtype=bool)]
        if len(hkl) == 0:
            return np.zeros((0, 6))
        f2 = _f2(self, hkl, float(b_iso_angstrom2))
        # extinction threshold relative to the phase's strongest |F|² (Q ≤ max(q_max, 1 1/Å))
        ref = _rings(self, max(q_max, NORMALISATION_Q_MIN_INV_ANGSTROM), float(b_iso_angstrom2))
        f2_ref = max((r.mean_f2 for r in ref), default=0.0)
        keep = f2 >= EXTINCTION_REL * f2_ref
        hkl, f2 = hkl[keep], f2[keep]
        if len(hkl) == 0:
            return np.zeros((0, 6))
        a_mat, b_mat, _ = _geometry(self.lattice)
        g = hkl.astype(float) @ b_mat.T  # Cartesian reciprocal vectors (1/Å), rows
        z = a_mat @ uvw
        z /= np.linalg.norm(z)
        glen = np.linalg.norm(g, axis=1)
        order = np.lexsort((-hkl[:, 2], -hkl[:, 1], -hkl[:, 0], np.round(glen, 9)))
        x = g[order[0]] - (g[order[0]] @ z) * z
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        gx, gy = g @ x, g @ y
        gx[np.abs(gx) < 1e-12] = 0.0
        gy[np.abs(gy) < 1e-12] = 0.0
        ang = np.mod(np.arctan2(gy, gx), 2 * np.pi)
        out = np.column_stack([gx, gy, f2, hkl.astype(float)])
        order = np.lexsort((np.round(ang, 9), np.round(glen, 9)))
        return out[order]

    def family(self, hkl: Iterable[int]) -> np.ndarray:
        """Every (hkl) equivalent to ``hkl`` under the Laue class (Friedel mates included), (n, 3) int.

        >>> len(get_phase("cu").family((1, 1, 1))), len(get_phase("li").family((1, 1, 0)))
        (8, 12)
        """
        h = np.asarray(list(hkl), dtype=np.int64).reshape(1, 3)
        members = np.matmul(h[None], _laue_rotations(self.space_group))[:, 0, :]
        return _unique_rows(members)[0]

    def interplanar_angles(self, hkl1: Iterable[int], hkl2: Iterable[int], decimals: int = 2) -> np.ndarray:
        """Distinct angles (degrees, 0-180) between the reciprocal vectors of any member of the form {hkl1} and
        any member of {hkl2} (:meth:`family`): the angles two indexed spots of one crystal can make, sorted and
        rounded to ``decimals``. Two spots of one zone of one crystal make one of these angles.

        >>> get_phase("cu").interplanar_angles((1, 1, 1), (2, 0, 0)).tolist()
        [54.74, 125.26]
        >>> get_phase("cu").interplanar_angles((1, 1, 1), (1, 1, 1)).tolist()
        [0.0, 70.53, 109.47, 180.0]
        """
        gstar = _geometry(self.lattice)[2]
        f1 = self.family(hkl1).astype(float)
        f2 = self.family(hkl2).astype(float)
        dots = f1 @ gstar @ f2.T
        n1 = np.sqrt(np.einsum("ni,ij,nj->n", f1, gstar, f1))
        n2 = np.sqrt(np.einsum("ni,ij,nj->n", f2, gstar, f2))
        cos = np.clip(dots / np.outer(n1, n2), -1.0, 1.0)
        return np.unique(np.round(np.degrees(np.arccos(cos)), decimals)) + 0.0


# ----------------------------------------------------------------------------------------------------
# The library.  Coordinates are the asymmetric unit in the stated setting; Wyckoff letters in comments.
# Lattice parameters are the room-temperature literature values that reproduce the d-spacings of
# ../shared/reference/sei_reflections.csv (to its 1e-4 Å rounding).
# ----------------------------------------------------------------------------------------------------
_CUBIC = (90.0, 90.0, 90.0)

PHASES: dict[str, Phase] = {
    # bcc Li, W-type: Li 2a (0,0,0).  a = 3.509 Å (room temperature; Nadler & Kempter, Anal. Chem. 31,
    # 2109 (1959) give 3.5100 Å at 25 °C; 3.509 Å is the value the reference CSV d-spacings imply).
    "li": Phase(
        name="Li (bcc)",
        space_group="I m -3 m",
        lattice=(3.509, 3.509, 3.509, *_CUBIC),
        atoms=(("Li", (0.0, 0.0, 0.0)),),
        source="bcc Li, a = 3.509 Å (RT; cf. Nadler & Kempter, Anal. Chem. 31, 2109 (1959): 3.510 Å)",
    ),
    # Li2O, antifluorite: O 4a (0,0,0), Li 8c (1/4,1/4,1/4).  a = 4.611 Å (room temperature).
    "li2o": Phase(
        name="Li2O",
        space_group="F m -3 m",
        lattice=(4.611, 4.611, 4.611, *_CUBIC),
        atoms=(("O", (0.0, 0.0, 0.0)), ("Li", (0.25, 0.25, 0.25))),
        source="antifluorite Li2O, a = 4.611 Å (room temperature; the value the reference d-spacings imply, "
        "within the published RT range 4.61-4.62 Å)",
    ),
    # LiF, rock salt: Li 4a (0,0,0), F 4b (1/2,1/2,1/2).  a = 4.0270 Å, ICDD PDF 04-0857
    # (Swanson & Tatge, NBS Circular 539 vol. 1 (1953)).
    "lif": Phase(
        name="LiF",
        space_group="F m -3 m",
        lattice=(4.027, 4.027, 4.027, *_CUBIC),
        atoms=(("Li", (0.0, 0.0, 0.0)), ("F", (0.5, 0.5, 0.5))),
        source="rock-salt LiF, a = 4.0270 Å (ICDD PDF 04-0857; Swanson & Tatge, NBS Circ. 539 (1953))",
    ),
    # LiH, rock salt: Li 4a (0,0,0), H 4b (1/2,1/2,1/2).  a = 4.083 Å (room temperature, 4.0834 Å in
    # CRC-type handbooks).
    "lih": Phase(
        name="LiH",
        space_group="F m -3 m",
        lattice=(4.083, 4.083, 4.083, *_CUBIC),
        atoms=(("Li", (0.0, 0.0, 0.0)), ("H", (0.5, 0.5, 0.5))),
        source="rock-salt LiH, a = 4.083 Å (room temperature; handbook value 4.0834 Å)",
    ),
    # Li2CO3 (zabuyelite), C2/c unique axis b, cell choice 1: Li 8f, C 4e (0,y,1/4), O1 4e (0,y,1/4),
    # O2 8f.  Coordinates: Effenberger & Zemann, Z. Kristallogr. 150, 133 (1979) (single-crystal X-ray
    # refinement of Li2CO3), quoted from memory and confirmed by the reference CSV: a least-squares fit
    # of the 8 free coordinates to its |F|² converges on exactly these 4-decimal values.  Lattice
    # a = 8.3593, b = 4.9725, c = 6.1975 Å, beta = 114.83 deg: the room-temperature cell that
    # reproduces the reference d-spacings.
    "li2co3": Phase(
        name="Li2CO3",
        space_group="C 1 2/c 1",
        lattice=(8.3593, 4.9725, 6.1975, 90.0, 114.83, 90.0),
        atoms=(
            ("Li", (0.1965, 0.4484, 0.8344)),  # 8f
            ("C", (0.0, 0.0657, 0.25)),  # 4e
            ("O", (0.0, 0.3213, 0.25)),  # 4e (O1)
            ("O", (0.1459, -0.0635, 0.3127)),  # 8f (O2)
        ),
        source="Li2CO3 C2/c: coordinates after Effenberger & Zemann, Z. Kristallogr. 150, 133 (1979); "
        "cell a=8.3593 b=4.9725 c=6.1975 Å beta=114.83°",
    ),
    # LiOH, P4/nmm origin choice 2: Li 2a (3/4,1/4,0), O 2c (1/4,1/4,z), H 2c (1/4,1/4,z).
    # a = 3.549, c = 4.334 Å: Dachs, Z. Kristallogr. 112, 60 (1959) (neutron diffraction).
    # z(O) = 0.194, z(H) = 0.405 (the same in both origin choices; origin 1 has Li at 0,0,0): the values
    # the reference CSV's |F|² imply (least-squares over its 26 rows, residual < 1e-4), consistent with
    # the published structure (O-H 0.91 Å along c).
    "lioh": Phase(
        name="LiOH",
        space_group="P 4/n m m:2",
        lattice=(3.549, 3.549, 4.334, 90.0, 90.0, 90.0),
        atoms=(("Li", (0.75, 0.25, 0.0)), ("O", (0.25, 0.25, 0.194)), ("H", (0.25, 0.25, 0.405))),
        source="LiOH P4/nmm (origin 2), a=3.549 c=4.334 Å, z(O)=0.194, z(H)=0.405 "
        "(Dachs, Z. Kristallogr. 112, 60 (1959), neutron)",
    ),
    # alpha-Li3N, P6/mmm: N 1a (0,0,0), Li1 1b (0,0,1/2), Li2 2c (1/3,2/3,0).
    # a = 3.648, c = 3.875 Å: Rabenau & Schulz, J. Less-Common Met. 50, 155 (1976).
    "li3n": Phase(
        name="Li3N",
        space_group="P 6/m m m",
        lattice=(3.648, 3.648, 3.875, 90.0, 90.0, 120.0),
        atoms=(("N", (0.0, 0.0, 0.0)), ("Li", (0.0, 0.0, 0.5)), ("Li", (1 / 3, 2 / 3, 0.0))),
        source="alpha-Li3N P6/mmm, a=3.648 c=3.875 Å (Rabenau & Schulz, J. Less-Common Met. 50, 155 (1976))",
    ),
    # Cu, fcc: Cu 4a (0,0,0).  a = 3.6150 Å, ICDD PDF 04-0836 (Swanson & Tatge, NBS Circ. 539 (1953)).
    "cu": Phase(
        name="Cu",
        space_group="F m -3 m",
        lattice=(3.615, 3.615, 3.615, *_CUBIC),
        atoms=(("Cu", (0.0, 0.0, 0.0)),),
        source="fcc Cu, a = 3.6150 Å (ICDD PDF 04-0836; Swanson & Tatge, NBS Circ. 539 (1953))",
    ),
    # Cu2O (cuprite), Pn-3m origin choice 2: Cu 4b (0,0,0), O 2a (1/4,1/4,1/4).
    # a = 4.2696 Å, ICDD PDF 05-0667 (NBS Circ. 539 vol. 2 (1953)).
    "cu2o": Phase(
        name="Cu2O",
        space_group="P n -3 m:2",
        lattice=(4.2696, 4.2696, 4.2696, *_CUBIC),
        atoms=(("Cu", (0.0, 0.0, 0.0)), ("O", (0.25, 0.25, 0.25))),
        source="cuprite Cu2O Pn-3m (origin 2), a = 4.2696 Å (ICDD PDF 05-0667)",
    ),
    # beta-Li3PO4 (low-temperature form), Pmn2_1: Li1 4b, Li2 2a, P 2a, O1 4b, O2 2a, O3 2a.
    # Keffer, Mighell, Mauer, Swanson & Block, Inorg. Chem. 6, 119 (1967); AMCSD 0012673.
    "li3po4_beta": Phase(
        name="beta-Li3PO4",
        space_group="P m n 21",
        lattice=(6.115, 5.2394, 4.8554, 90.0, 90.0, 90.0),
        atoms=(
            ("Li", (0.2481, 0.3277, 0.9860)),  # 4b
            ("Li", (0.5, 0.8428, 0.9893)),  # 2a
            ("P", (0.0, 0.8243, 0.0)),  # 2a
            ("O", (0.20777, 0.68676, 0.8961)),  # 4b
            ("O", (0.0, 0.1052, 0.9004)),  # 2a
            ("O", (0.5, 0.1814, 0.8172)),  # 2a
        ),
        source="beta-Li3PO4 Pmn2_1: Keffer et al., Inorg. Chem. 6, 119 (1967); AMCSD 0012673",
    ),
    # gamma-Li3PO4 (high-temperature form), Pnma in the Pmnb setting (a=6.11, b=10.46, c=4.92 Å):
    # Li1 8d, Li2 4c (1/4 -> 3/4,y,z), P 4c, O1 8d, O2 4c, O3 4c.
    # Wang, Chakoumakos, Sales, Kwak & Bates, J. Solid State Chem. 115, 313 (1995); AMCSD 0013843.
    "li3po4_gamma": Phase(
        name="gamma-Li3PO4",
        space_group="P m n b",
        lattice=(6.1113, 10.4612, 4.9208, 90.0, 90.0, 90.0),
        atoms=(
            ("Li", (0.5016, 0.1627, 0.3008)),  # 8d
            ("Li", (0.75, 0.4246, 0.2045)),  # 4c
            ("P", (0.25, 0.4115, 0.3079)),  # 4c
            ("O", (0.0441, 0.3418, 0.2054)),  # 8d
            ("O", (0.25, 0.0503, 0.2928)),  # 4c
            ("O", (0.75, 0.0896, 0.1223)),  # 4c
        ),
        source="gamma-Li3PO4 Pnma (Pmnb setting): Wang et al., J. Solid State Chem. 115, 313 (1995); "
        "AMCSD 0013843",
    ),
    # Au, fcc: Au 4a (0,0,0).  a = 4.078 Å (ICDD PDF 04-0784 gives 4.0786 Å): the gold calibration
    # standard (rings 111, 200, 220, 311 at Q = 0.4247, 0.4904, 0.6936, 0.8133 1/Å).
    "au": Phase(
        name="Au",
        space_group="F m -3 m",
        lattice=(4.078, 4.078, 4.078, *_CUBIC),
        atoms=(("Au", (0.0, 0.0, 0.0)),),
        source="fcc Au, a = 4.078 Å (ICDD PDF 04-0784: 4.0786 Å); calibration standard",
    ),
}


def _normalise_name(name: str) -> str:
    s = name.strip().lower().replace("β", "beta").replace("γ", "gamma")
    return re.sub(r"[^0-9a-z]", "", s)


_LOOKUP: dict[str, str] = {}
for _pid, _ph in PHASES.items():
    _LOOKUP[_normalise_name(_pid)] = _pid
    _LOOKUP[_normalise_name(_ph.name)] = _pid
# word-order aliases for the phosphates ("Li3PO4-beta", "beta Li3PO4", ...)
_LOOKUP["li3po4beta"] = "li3po4_beta"
_LOOKUP["betali3po4"] = "li3po4_beta"
_LOOKUP["li3po4gamma"] = "li3po4_gamma"
_LOOKUP["gammali3po4"] = "li3po4_gamma"


def get_phase(name: str) -> Phase:
    """The library phase for an id (``"lif"``) or a display / CSV name (``"Li (bcc)"``), any case.

    >>> get_phase("LI2O").name, get_phase("beta-Li3PO4").space_group_label
    ('Li2O', 'Pmn21 (31)')
    """
    pid = _LOOKUP.get(_normalise_name(str(name)))
    if pid is None:
        known = ", ".join(f"{k!r} ({p.name})" for k, p in PHASES.items())
        raise KeyError(f"unknown phase {name!r}; known phases: {known}")
    return PHASES[pid]


def reference_ticks(
    names: Iterable[str], q_max: float = 1.0, min_intensity: float = 10.0
) -> dict[str, list[tuple[float, str]]]:
    """Tick marks for plots: phase display name -> [(Q in 1/Å, "hkl"), ...] of rings with intensity ≥ min.

    >>> reference_ticks(["lif"], q_max=0.8)
    {'LiF': [(0.4301, '111'), (0.4966, '200'), (0.7024, '220')]}
    """
    out: dict[str, list[tuple[float, str]]] = {}
    for n in names:
        ph = get_phase(n)
        out[ph.name] = [
            (round(r.q_inv_angstrom, 4), r.label) for r in ph.reflections(q_max, min_intensity=min_intensity)
        ]
    return out


# ----------------------------------------------------------------------------------------------------
# implementation
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _geometry(lattice: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, G*): A has the direct basis vectors a, b, c as columns (Cartesian Å; a along x, b in the
    xy plane), B = inv(A).T the reciprocal basis a*, b*, c* as columns (1/Å, no 2π), G* = B.T B."""
    a, b, c, al, be, ga = lattice
    al, be, ga = (math.radians(v) for v in (al, be, ga))
    cx = c * math.cos(be)
    cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
    cz = math.sqrt(max(c * c - cx * cx - cy * cy, 0.0))
    a_mat = np.array([[a, b * math.cos(ga), cx], [0.0, b * math.sin(ga), cy], [0.0, 0.0, cz]])
    b_mat = np.linalg.inv(a_mat).T
    return a_mat, b_mat, b_mat.T @ b_mat


def _hkl_sphere(lattice: tuple[float, ...], q_max: float) -> np.ndarray:
    """All (hkl) ≠ 0 with 1/d ≤ q_max, as an (N, 3) int64 array (|h| ≤ q_max·|a| etc.)."""
    a_mat, _, gstar = _geometry(lattice)
    lim = [int(math.floor(q_max * np.linalg.norm(a_mat[:, i]) + 1e-9)) for i in range(3)]
    grids = np.meshgrid(*[np.arange(-n, n + 1) for n in lim], indexing="ij")
    hkl = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    q2 = np.einsum("ni,ij,nj->n", hkl.astype(float), gstar, hkl.astype(float))
    keep = (q2 > 0) & (q2 <= q_max * q_max * (1 + 1e-12))
    return hkl[keep]


@functools.lru_cache(maxsize=64)
def _cell_atoms(space_group: str, atoms: tuple) -> tuple[tuple[str, np.ndarray], ...]:
    """Expand the asymmetric unit with the space-group operations: element -> (n, 3) positions."""
    ops = gemmi.SpaceGroup(space_group).operations()
    by_el: dict[str, list[np.ndarray]] = {}
    for el, xyz in atoms:
        sites: list[np.ndarray] = []
        for op in ops:  # all symmetry operations, centring included
            p = np.mod(np.asarray(op.apply_to_xyz([float(v) for v in xyz])), 1.0)
            if not any(np.all(np.abs(np.mod(p - s + 0.5, 1.0) - 0.5) < 1e-4) for s in sites):
                sites.append(p)
        by_el.setdefault(gemmi.Element(el).name, []).extend(sites)
    return tuple((el, np.array(pos)) for el, pos in by_el.items())


def _form_factor(el: str, s2: np.ndarray) -> np.ndarray:
    """Electron scattering factor f(s) in Å (Peng 1996 / ITC Table 4.3.2.2 via gemmi), s² = 1/(4d²)."""
    coefs = np.asarray(gemmi.Element(el).c4322.get_coefs(), dtype=float)
    a, b = coefs[:5], coefs[5:]
    return np.exp(-np.outer(s2, b)) @ a


def _f2(phase: Phase, hkl: np.ndarray, b_iso: float) -> np.ndarray:
    """Kinematic |F(hkl)|² (Å²) for an (N, 3) integer array."""
    hkl_f = hkl.astype(float)
    s2 = np.einsum("ni,ij,nj->n", hkl_f, _geometry(phase.lattice)[2], hkl_f) / 4.0
    dw = np.exp(-b_iso * s2)
    f_total = np.zeros(len(hkl), dtype=complex)
    for el, pos in _cell_atoms(phase.space_group, phase.atoms):
        geo = np.exp(2j * np.pi * (hkl_f @ pos.T)).sum(axis=1)
        f_total += _form_factor(el, s2) * dw * geo
    return np.abs(f_total) ** 2


@functools.lru_cache(maxsize=16)
def _laue_rotations(space_group: str) -> np.ndarray:
    """Integer matrices R (k, 3, 3) of the Laue group acting on row vectors h -> h @ R."""
    ops = gemmi.SpaceGroup(space_group).operations()
    mats = {tuple(np.asarray(op.rot, dtype=np.int64).ravel() // gemmi.Op.DEN) for op in ops.sym_ops}
    rots = [np.array(m).reshape(3, 3) for m in sorted(mats)]
    rots += [-r for r in rots]  # Friedel (inversion): the Laue class
    return np.unique(np.array(rots), axis=0)


def _canonical(space_group: str, hkl: np.ndarray) -> np.ndarray:
    """Representative of each form: fewest negative indices, then non-negative l, then k, then the
    lexicographically largest (h, k, l).  Gives 311 (cubic), 211/101 (tetragonal), 210 (hexagonal),
    hkl ≥ 0 (orthorhombic) and -111, -202 (monoclinic, b unique), as in the reference CSV."""
    rots = _laue_rotations(space_group)
    members = np.matmul(hkl[None], rots)  # (k, N, 3): h @ R for every rotation
    big = int(np.abs(hkl).max()) + 1 if len(hkl) else 1
    span = 2 * big + 1
    neg = members < 0
    tier = (neg.sum(axis=2) * 2 + neg[..., 2]) * 2 + neg[..., 1]
    lex = (big - members[..., 0]) * span * span + (big - members[..., 1]) * span + (big - members[..., 2])
    key = tier * span**3 + lex
    best = np.argmin(key, axis=0)
    return members[best, np.arange(hkl.shape[0])]


def _unique_rows(hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(hkl, axis=0, return_counts=True)`` for integer (N, 3) rows, through one integer key per row
    (the same rows in the same lexicographic order; unique on a 1-D key sorts several times faster)."""
    big = int(np.abs(hkl).max()) + 1 if len(hkl) else 1
    span = 2 * big + 1
    key = ((hkl[:, 0] + big) * span + (hkl[:, 1] + big)) * span + (hkl[:, 2] + big)
    keys, counts = np.unique(key, return_counts=True)
    rows = np.stack([keys // (span * span) - big, keys // span % span - big, keys % span - big], axis=1)
    return rows.astype(hkl.dtype), counts


@functools.lru_cache(maxsize=128)
def _rings(phase: Phase, q_max: float, b_iso: float) -> tuple[Reflection, ...]:
    """All non-extinct rings with Q ≤ q_max, merged and normalised (to the strongest of them)."""
    ops = gemmi.SpaceGroup(phase.space_group).operations()
    hkl = _hkl_sphere(phase.lattice, q_max)
    if len(hkl) == 0:
        return ()
    hkl = hkl[~np.asarray(ops.systematic_absences(hkl), dtype=bool)]
    if len(hkl) == 0:
        return ()
    reps, mult = _unique_rows(_canonical(phase.space_group, hkl))
    f2 = _f2(phase, reps, b_iso)
    gstar = _geometry(phase.lattice)[2]
    d = 1.0 / np.sqrt(np.einsum("ni,ij,nj->n", reps.astype(float), gstar, reps.astype(float)))
    order = np.argsort(-d, kind="stable")
    # merge forms with (nearly) equal d: successive differences below the tolerance
    # (Python numbers from here: a few thousand forms, each touched a few times)
    d_l, hkl_l, mult_l = d.tolist(), [tuple(h) for h in reps.tolist()], mult.tolist()
    mf2_l = (mult * f2).tolist()
    hkl_sq = (reps * reps).sum(axis=1).tolist()
    groups: list[list[int]] = []
    for i in order.tolist():
        if groups and d_l[groups[-1][-1]] - d_l[i] < D_MERGE_TOLERANCE_ANGSTROM:
            groups[-1].append(i)
        else:
            groups.append([i])
    rows = []
    for grp in groups:
        m = sum(mult_l[i] for i in grp)
        mf2 = float(np.sum([mf2_l[i] for i in grp]))  # (numpy's summation order, as for an array of the group)
        # representative: simplest index (smallest h²+k²+l²), then the strongest form; the ring's d is
        # that of its first (largest-d) form, as in the reference CSV
        rep = min(grp, key=lambda i: (hkl_sq[i], -mf2_l[i]))
        others = tuple(hkl_l[i] for i in grp if i != rep)
        rows.append((hkl_l[rep], d_l[grp[0]], m, mf2 / m, mf2, others))
    i_max = max(r[4] for r in rows)
    out = []
    for hkl_r, d_r, m, mean_f2, mf2, others in rows:
        if i_max <= 0 or mf2 < EXTINCTION_REL * i_max:
            continue
        out.append(
            Reflection(
                hkl=hkl_r,
                d_angstrom=d_r,
                q_inv_angstrom=1.0 / d_r,
                multiplicity=m,
                mean_f2=mean_f2,
                intensity=100.0 * mf2 / i_max,
                overlaps=others,
            )
        )
    return tuple(out)
