"""Leica LIF (optional extra, readlif): a file laid out as LAS X writes it, one image per pinhole step."""

from __future__ import annotations

import numpy as np
import pytest
from acq_data import SHIFTS, hazy_steps, write_lif
from typer.testing import CliRunner

from dehaze.cli import app
from dehaze.store import check_ladder, open_ladder

pytest.importorskip("readlif")
runner = CliRunner()
AIRY_UM = 106.12  # 1 AU at the pinhole plane, µm


def _settings(au: float) -> dict[str, str]:
    return {"Pinhole": f"{au * AIRY_UM * 1e-6:.6e}", "PinholeAiry": f"{au:.4f}", "NumericalAperture": "1.40", "Magnification": "63"}


def test_lif_series(tmp_path):
    steps = hazy_steps()
    aus = [0.5, 1.0, 2.0, 4.0]
    order = [1, 3, 0, 2]  # acquired in another order than the pinhole order
    src = write_lif(tmp_path / "exp.lif", [(f"Series{k:03d}", steps[i], _settings(aus[i])) for k, i in enumerate(order)])
    out = tmp_path / "ladder.zarr"
    dry = runner.invoke(app, ["ingest", str(src), "-o", str(out), "--dry-run"])
    assert dry.exit_code == 0 and "lif" in dry.output and not out.exists()
    res = runner.invoke(app, ["ingest", str(src), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert check_ladder(out) == []
    store = open_ladder(out)
    assert store.meta.pinhole_au == pytest.approx(aus)  # the vendor's Airy units
    assert store.meta.pinhole_um == pytest.approx([a * AIRY_UM for a in aus], rel=1e-5)  # metres -> µm
    assert store.meta.pixel_size_um["x"] == pytest.approx(0.1)
    shifts = store.extra("field_000", "shifts")[...]
    assert np.sqrt(np.mean(np.sum((shifts - SHIFTS) ** 2, axis=1))) < 0.35


def test_truncated_lif(tmp_path):
    steps = hazy_steps()
    src = write_lif(tmp_path / "exp.lif", [(f"S{i}", steps[i], _settings(a)) for i, a in enumerate([0.5, 1.0, 2.0, 4.0])])
    data = src.read_bytes()
    src.write_bytes(data[: len(data) - 5000])
    res = runner.invoke(app, ["ingest", str(src), "-o", str(tmp_path / "l.zarr"), "-q"])
    assert res.exit_code == 2 and "exp.lif" in res.output and "truncated" in res.output
    assert not (tmp_path / "l.zarr").exists()
