"""Electron-optical relations used across sendmap (pure functions, SI constants from CODATA 2018).

Q is always 1/d in 1/Å (the py4DSTEM convention of SCIENCE.md), never 2π/d.
"""
from __future__ import annotations

import math

# CODATA 2018 (scipy.constants carries the same values)
PLANCK_J_S = 6.62607015e-34
ELECTRON_MASS_KG = 9.1093837015e-31
ELEMENTARY_CHARGE_C = 1.602176634e-19
SPEED_OF_LIGHT_M_S = 299792458.0


def electron_wavelength_angstrom(beam_energy_kv: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV.

    λ = h / sqrt(2 m0 e V (1 + e V / (2 m0 c²)))

    >>> round(electron_wavelength_angstrom(200.0), 5)
    0.02508
    >>> round(electron_wavelength_angstrom(300.0), 5)
    0.01969
    """
    if beam_energy_kv <= 0:
        raise ValueError(f"beam energy must be positive, got {beam_energy_kv} kV")
    v = beam_energy_kv * 1e3
    m0, e, c, h = ELECTRON_MASS_KG, ELEMENTARY_CHARGE_C, SPEED_OF_LIGHT_M_S, PLANCK_J_S
    lam_m = h / math.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c * c)))
    return lam_m * 1e10


def probe_radius_inv_angstrom(convergence_mrad: float, beam_energy_kv: float) -> float:
    """Radius of the probe disk in reciprocal space, α/λ in 1/Å.

    >>> round(probe_radius_inv_angstrom(2.0, 200.0), 4)
    0.0797
    """
    return convergence_mrad * 1e-3 / electron_wavelength_angstrom(beam_energy_kv)


def speckle_grain_correlation(distance, radius):
    """Normalised intensity autocorrelation of fully developed nanobeam speckle, |γ(Δ)|², for a probe disk of
    ``radius`` (same units as ``distance``, e.g. 1/Å): γ(Δ) is the overlap area of two disks of that radius Δ
    apart over one disk's area, γ = (2/π)(arccos u − u·sqrt(1 − u²)), u = Δ/(2·radius), 0 beyond Δ = 2·radius.

    The scattered amplitude of an amorphous volume under a probe is its random (delta-correlated) scattering
    amplitude convolved with the probe disk (the probe's aperture in reciprocal space), so amplitudes Δ apart
    share the overlap of two disks; for a circular complex Gaussian amplitude the intensity covariance is |γ|²
    times the squared mean (Goodman, Speckle Phenomena in Optics, 2007, ch. 4). Partially developed speckle of M
    independent volumes: covariance |γ|²/M. Used by ``sendmap synth`` (grain size) and by the profile stage's
    speckle error model, so both share one definition.

    >>> float(speckle_grain_correlation(0.0, 0.08)), float(speckle_grain_correlation(0.16, 0.08))
    (1.0, 0.0)
    """
    import numpy as np

    u = np.clip(np.asarray(distance, dtype=float) / (2.0 * float(radius)), 0.0, 1.0)
    g = (2.0 / np.pi) * (np.arccos(u) - u * np.sqrt(1.0 - u * u))
    return g * g


def q_pixel_size_from_camera(pixel_size_um: float, camera_length_mm: float, beam_energy_kv: float) -> float:
    """Q per detector pixel, p / (L λ), in 1/Å per pixel (small-angle approximation).

    >>> round(q_pixel_size_from_camera(55.0, 100.0, 200.0), 4)
    0.0219
    """
    lam = electron_wavelength_angstrom(beam_energy_kv)
    return (pixel_size_um * 1e-6) / (camera_length_mm * 1e-3 * lam)
