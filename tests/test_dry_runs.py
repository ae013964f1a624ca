"""`dehaze train --dry-run` and `dehaze predict --dry-run`: the resolved config, the data read and what would
be written, printed; nothing written; the same one-line refusals as the real commands."""

from __future__ import annotations

import json

TINY = ["--set", "steps=4", "--set", "batch_size=2", "--set", "patch_size=16", "--set", "device=cpu",
        "--set", "model.base_channels=4", "--set", "model.depth=2"]


def _config_line(stdout: str) -> dict:
    line = next(x for x in stdout.splitlines() if x.startswith("resolved"))
    return json.loads(line.split(": ", 1)[1])


def test_train_dry_run_prints_and_writes_nothing(cli, good, tmp_path):
    out = tmp_path / "run"
    result = cli("train", "unet", "--data", good, "-o", out, "--dry-run", *TINY)
    assert result.exit_code == 0, result.stderr
    cfg = _config_line(result.stdout)
    assert cfg["steps"] == 4 and cfg["optim"]["scheduler"] == "cosine" and cfg["model"]["residual"] is False  # defaults filled
    assert "2 field(s)" in result.stdout and "1 for training, 1 held out" in result.stdout
    assert f"would write {out}" in result.stdout and "nothing written" in result.stdout
    assert not out.exists()
    # an HVAE's defaults come from its preset and its trainer's overrides
    cfg = _config_line(cli("train", "hvae", "--data", good, "-o", out, "--dry-run", "--set", "model.preset=tiny").stdout)
    assert cfg["model"]["levels"] == 2 and cfg["optim"]["name"] == "adamax"
    assert not out.exists()


def test_train_dry_run_of_a_resume_and_an_extension(cli, good, run, tmp_path):
    args = ["--set", "steps=2", "--set", "batch_size=2", "--set", "patch_size=16", "--set", "device=cpu",
            "--set", "model.base_channels=4", "--set", "model.depth=2", "--set", "data.val_patches=2"]
    before = (run / "run.json").read_text()
    result = cli("train", "unet", "--data", good, "-o", run, "--dry-run", "--resume", *args)
    assert result.exit_code == 0 and "would resume" in result.stdout and "at step 2 of 2" in result.stdout, result.stderr
    result = cli("train", "unet", "--data", good, "-o", run, "--dry-run", "--resume", *args, "--set", "steps=6")
    assert result.exit_code == 0 and "budget extended from 2 to 6 steps" in result.stdout, result.stderr
    result = cli("train", "unet", "--data", good, "-o", run, "--dry-run", *args)  # the real run refuses: so does the dry run
    assert result.exit_code == 2 and "--resume" in result.stderr
    result = cli("train", "latent", "--data", good, "-o", tmp_path / "lat", "--dry-run", "--base", run)
    assert result.exit_code == 2 and "'unet' run" in result.stderr
    assert (run / "run.json").read_text() == before and not (tmp_path / "lat").exists()


def test_predict_dry_run_prints_and_writes_nothing(cli, good, run, tmp_path):
    out = tmp_path / "preds"
    result = cli("predict", run, "--input", good, "-o", out, "--dry-run", "--strategy", "all", "--tile", "32")
    assert result.exit_code == 0, result.stderr
    assert _config_line(result.stdout)["tile"] == 32
    assert f"run unet: {run}" in result.stdout and "2 field(s) x 4 steps" in result.stdout
    assert f"would write {out / 'one-shot-unet.zarr'}: one-shot-unet (tile 32 px, K = 1)" in result.stdout
    assert not out.exists()
    result = cli("predict", run, "--input", good, "-o", out, "--dry-run", "--strategy", "pixel-indi")
    assert result.exit_code == 2 and "needs a trained pixel run" in result.stderr and not out.exists()


def test_info_png_montage(cli, good, tmp_path):
    """`dehaze info --png`: a PNG montage of a field's steps labelled with pinhole and statistics."""
    from dehaze.quicklook import step_label
    from dehaze.store import open_ladder

    png = tmp_path / "ladder.png"
    result = cli("info", good, "--png", png, "--field", "field_001")
    assert result.exit_code == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    store = open_ladder(good)
    assert step_label(store, 0).startswith("step 0: 0.5 AU") and "mean" in step_label(store, 0)
    assert step_label(store, 3).startswith("step 3: widefield")
    for args, named in (([good, "--png", tmp_path / "x.jpg"], "ending in .png"),
                        ([good, "--png", tmp_path / "nope" / "x.png"], "does not exist"),
                        ([good, "--png", tmp_path / "y.png", "--field", "field_999"], "field_999")):
        result = cli("info", *args)
        assert result.exit_code == 2 and named in result.stderr, result.stderr
    assert not (tmp_path / "y.png").exists()


def test_flow_dry_run_resolves_like_the_run(cli, good, tmp_path):
    """A kind with an optional base needs no --base in the dry run either, and the printed config holds what
    the data decide (the flow restorer's target_scale), as the run itself resolves it."""
    out = tmp_path / "flow"
    result = cli("train", "flow", "--data", good, "-o", out, "--dry-run", *TINY)
    assert result.exit_code == 0, result.stderr
    assert _config_line(result.stdout)["model"]["target_scale"] > 0 and not out.exists()


def test_a_mistyped_command_line_is_one_line_and_exit_2(cli, good, tmp_path):
    """An unknown option, a value outside its choices, a missing argument, an unknown command: one line on
    stderr naming what was wrong and the help to read, no box, no traceback, nothing written."""
    cases = [
        (["calibrate", tmp_path / "p.zarr", "--truth", good, "--method", "cubic"], ["'--method'", "'cubic'", "'dehaze calibrate --help'"]),
        (["train", "unet", "--data", good, "-o", tmp_path / "run", "--stpes", "3"], ["--stpes", "'dehaze train --help'"]),
        (["evaluate"], ["Missing argument", "'dehaze evaluate --help'"]),
        (["simulat"], ["No such command 'simulat'", "'dehaze --help'"]),
    ]
    for args, named in cases:
        result = cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("dehaze: error: "), (args, result.stderr)
        assert all(n in lines[0] for n in named) and "Traceback" not in result.stderr and "─" not in result.stderr, lines[0]
    assert not any(tmp_path.iterdir())
    assert cli().exit_code == 2 and "Usage: dehaze" in cli().stdout  # a bare `dehaze` shows the help, as before
