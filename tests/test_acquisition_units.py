"""Pinhole units: OME units, Airy-unit conversion, Leica LIF metadata."""

from __future__ import annotations

import pytest

from acquisition.lif import lif_channel_meta
from acquisition.units import airy_unit_um, length_to_um, pinhole_um_to_au
from dehaze.errors import UserError


@pytest.mark.parametrize("value,unit,um", [(50, None, 50), (50, "µm", 50), (50, "um", 50), (5e4, "nm", 50), (0.05, "mm", 50), (5e-5, "m", 50)])
def test_lengths(value, unit, um):
    assert length_to_um(value, unit, "x") == pytest.approx(um)


def test_unknown_unit_names_where():
    with pytest.raises(UserError, match=r"f.ome.tif: unknown length unit 'px'"):
        length_to_um(1, "px", "f.ome.tif")


def test_airy_units():
    assert airy_unit_um(525, 1.4) == pytest.approx(1.22 * 0.525 / 1.4)
    au_at_pinhole = 100 * airy_unit_um(525, 1.4)
    assert pinhole_um_to_au(au_at_pinhole, magnification_at_pinhole=100, em_wavelength_nm=525, na=1.4) == pytest.approx(1.0)
    assert pinhole_um_to_au(80, um_per_au=40) == 2.0
    assert pinhole_um_to_au(80) is None  # not calibrated: no guess from the objective's magnification


def test_lif_settings_metres_and_airy():
    # as LAS X writes ATLConfocalSettingDefinition: Pinhole in metres (a diameter), PinholeAiry in AU
    settings = {"Pinhole": "1.0612e-4", "PinholeAiry": "1.0000", "NumericalAperture": "1.40", "Magnification": "63"}
    (ch,) = lif_channel_meta(settings, 1, "a.lif [Series001]")
    assert ch.pinhole == pytest.approx(106.12) and ch.pinhole_unit == "µm" and ch.pinhole_airy == 1.0


def test_lif_bad_number():
    with pytest.raises(UserError, match="Pinhole='abc'"):
        lif_channel_meta({"Pinhole": "abc"}, 1, "a.lif")


def test_lif_channel_wavelengths_from_the_active_detectors():
    import xml.etree.ElementTree as ET

    from acq_data import leica_detectors

    settings = {"Pinhole": "1e-4", "PinholeAiry": "1.0", "EmissionWavelengthForPinholeAiryCalculation": "580"}
    conf = ET.fromstring(f"<ATLConfocalSettingDefinition>{leica_detectors([(500, 540), (600, 700)], [488, 561], transmitted=1)}"
                         "</ATLConfocalSettingDefinition>")
    green, trans = lif_channel_meta(settings, 2, "a.lif", conf)
    assert (green.em_wavelength_nm, green.ex_wavelength_nm, green.pinhole_airy_at_nm, green.transmitted) == (520, 488, 580, False)
    assert trans.transmitted and trans.ex_wavelength_nm == 561  # the longest active line below its band
    # active detectors that do not match the channels one to one: wavelengths unknown, not guessed
    (only,) = lif_channel_meta(settings, 1, "a.lif", conf)
    assert only.em_wavelength_nm is None and only.pinhole_airy == 1.0
