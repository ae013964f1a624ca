"""Manifests: defaults, built-ins, overrides, schema, and every bad input -> exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import yaml

from dehaze.config import apply_overrides
from dehaze.errors import UserError
from dehaze.manifests import SimulationManifest, load_simulation_manifest


def test_default_yaml_is_the_embedded_default():
    assert load_simulation_manifest("default") == SimulationManifest() == load_simulation_manifest(None)


def test_paper_like_is_close_to_the_study():
    m = load_simulation_manifest("paper-like")
    assert m.volume.field_shape_yx == (512, 512)
    assert m.pinhole.n_steps == 8 and m.volume.nz >= 32
    assert (m.camera.qe, m.camera.read_noise_e, m.camera.bit_depth, m.camera.offset_adu) == (0.82, 6.0, 12, 100)


def test_overrides_apply_dotted_keys_and_yaml_values():
    m = load_simulation_manifest(None, ["camera.read_noise_e=2.5", "pinhole.steps_au=[1, 2]", "n_fields=2"])
    assert m.camera.read_noise_e == 2.5 and m.pinhole.steps_au == [1.0, 2.0] and m.n_fields == 2
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


@pytest.mark.parametrize("bad", ["no_equals_sign", "=3", "n_fields.sub=3"])
def test_malformed_override_is_a_user_error(bad):
    with pytest.raises(UserError):
        load_simulation_manifest(None, [bad])


def test_manifest_identity_changes_with_content():
    assert SimulationManifest().sha256() == SimulationManifest().sha256()
    assert SimulationManifest(seed=1).sha256() != SimulationManifest().sha256()


def test_schema_command_prints_json_schema(cli):
    result = cli("schema", "simulation")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert {"sample", "optics", "volume", "pinhole", "camera", "n_fields", "seed"} <= set(schema["properties"])


def test_unknown_schema_kind(cli):
    result = cli("schema", "nonsense")
    assert result.exit_code == 2 and "nonsense" in result.stderr


BAD_INPUTS = [
    ({"optics": {"numerical_aperture": 1.2}}, "optics.numerical_aperture"),  # unknown key, named
    ({"colour": "red"}, "colour"),
    ({"pinhole": {"steps_au": [1.0, -2.0]}}, "pinhole.steps_au"),
    ({"pinhole": {"steps_au": [1.0, 2.0, 2.0]}}, "strictly increasing"),
    ({"pinhole": {"steps_au": [2.0, 1.0]}}, "strictly increasing"),
    ({"pinhole": {"steps_au": []}}, "empty"),
    ({"optics": {"na": 1.6}}, "immersion_ri"),
    ({"volume": {"field_shape_yx": [0, 64]}}, "field_shape_yx"),
    ({"volume": {"nz": 1}}, "volume.nz"),
    ({"volume": {"keep_planes": [40]}}, "keep_planes"),
    ({"n_fields": 0}, "n_fields"),
]


@pytest.mark.parametrize(("patch", "named"), BAD_INPUTS)
def test_bad_manifest_exits_2_names_the_problem_and_writes_nothing(cli, tmp_path, tiny_manifest_dict, patch, named):
    data = tiny_manifest_dict
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out.zarr"
    result = cli("simulate", path, "-o", out, "-q")
    assert result.exit_code == 2
    assert named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists()


def test_bad_override_on_cli_exits_2(cli, tmp_path):
    result = cli("simulate", "-o", tmp_path / "o.zarr", "--set", "pinhole.steps_au=[3, 1]", "-q")
    assert result.exit_code == 2 and "steps_au" in result.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_missing_or_invalid_yaml_exits_2(cli, tmp_path):
    result = cli("simulate", tmp_path / "nope.yaml", "-o", tmp_path / "o.zarr", "-q")
    assert result.exit_code == 2 and "nope.yaml" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("sample: [unclosed\n")
    result = cli("simulate", broken, "-o", tmp_path / "o.zarr", "-q")
    assert result.exit_code == 2 and "broken.yaml" in result.stderr and "YAML" in result.stderr
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    assert cli("simulate", listy, "-o", tmp_path / "o.zarr", "-q").exit_code == 2
    assert not (tmp_path / "o.zarr").exists()


def test_unwritable_output_exits_2_before_any_work(cli, tmp_path, tiny_manifest_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for out in (blocker / "out.zarr", tmp_path / "missing" / "out.zarr"):
        result = cli("simulate", tiny_manifest_path, "-o", out, "-q")
        assert result.exit_code == 2, result.stderr
        assert str(out.name) in result.stderr
    assert blocker.read_text() == "not a folder"


def test_output_that_is_not_a_store_is_never_touched(cli, tmp_path, tiny_manifest_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        result = cli("simulate", tiny_manifest_path, "-o", precious, "-q", *extra)
        assert result.exit_code == 2 and "not a dehaze ladder store" in result.stderr
    assert (precious / "data.txt").read_text() == "keep me"
