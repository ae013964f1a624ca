"""Pinhole and length units: vendor values to µm diameters, µm to Airy units.

Facts (DESIGN §5): OME ``Channel@PinholeSize`` is a diameter, µm unless ``PinholeSizeUnit`` says
otherwise; Leica LIF ``Pinhole`` is a diameter in metres (plus ``PinholeAiry``); Nikon ND2
``dPinholeRadius`` is a radius (a factor-2 trap). One Airy unit is the diameter of the emission Airy disk,
``1.22 * lambda_em / NA`` at the sample; at the pinhole plane it is that times the total magnification.
"""

from __future__ import annotations

from dehaze.errors import UserError

# factor to µm for every length unit spelling we accept (OME UnitsLength symbols and common ASCII forms)
_TO_UM = {
    "pm": 1e-6,
    "Å": 1e-4, "A": 1e-4, "angstrom": 1e-4,
    "nm": 1e-3,
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "in": 25400.0, "inch": 25400.0,
}


def length_to_um(value: float, unit: str | None, where: str) -> float:
    """A length in ``unit`` (None: µm, the OME default) as µm; unknown units are a one-line UserError."""
    unit = "µm" if unit is None or unit == "" else unit.strip()
    factor = _TO_UM.get(unit, _TO_UM.get(unit.lower()))
    if factor is None:
        raise UserError(f"{where}: unknown length unit {unit!r} (known: nm, µm/um, mm, m)")
    return float(value) * factor


def airy_unit_um(em_wavelength_nm: float, na: float) -> float:
    """Diameter of 1 Airy unit at the sample, in µm: 1.22 * lambda_em / NA."""
    return 1.22 * em_wavelength_nm * 1e-3 / na


def pinhole_um_to_au(
    pinhole_um: float,
    *,
    um_per_au: float | None = None,
    magnification_at_pinhole: float | None = None,
    em_wavelength_nm: float | None = None,
    na: float | None = None,
) -> float | None:
    """A physical pinhole diameter (µm, at the pinhole plane) in Airy units, or None if not calibrated.

    Either ``um_per_au`` (the size of 1 AU at the pinhole plane, µm) or ``magnification_at_pinhole`` with
    the emission wavelength and NA is needed; the objective's nominal magnification alone is not enough
    (most scan heads add their own).
    """
    if um_per_au is not None:
        return pinhole_um / um_per_au
    if magnification_at_pinhole is not None and em_wavelength_nm is not None and na is not None:
        return pinhole_um / (magnification_at_pinhole * airy_unit_um(em_wavelength_nm, na))
    return None

