"""Ingestion throughput against reading the same files with tifffile alone (one run, one ratio).

Data: a folder of OME-TIFFs as a confocal writes them, one file per (field, pinhole step), with known drift
and haze. ``ratio = t_tifffile_read / t_ingest`` (>= 0.5 is the goal): ingestion includes discovery,
reading, NaN checks, registration, sub-pixel resampling, Blosc-lz4 compression and the statistics.
The registration error against the known drift is recorded too.

    PYTHONPATH=. python benchmarks/ingest.py [--size 512] [--fields 4] [--steps 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from acq_data import ome_xml  # noqa: E402

from acquisition.ingest import ingest  # noqa: E402
from acquisition.manifest import AcquisitionManifest  # noqa: E402
from dehaze.store import open_ladder  # noqa: E402

from machine import machine_info  # noqa: E402


def make_series(folder: Path, size: int, fields: int, steps: int, seed: int = 0, compression: str | None = None) -> np.ndarray:
    """Write the files; returns the true drift (fields, steps, 2) in px."""
    rng = np.random.default_rng(seed)
    drift = np.zeros((fields, steps, 2))
    for f in range(fields):
        canvas = ndimage.gaussian_filter((rng.random((size + 64, size + 64)) > 0.995).astype(float), 1.0) * 3000
        for t in range(steps):
            drift[f, t] = 0 if t == 0 else rng.uniform(-6, 6, 2)
            img = ndimage.gaussian_filter(canvas, 0.6 + 0.5 * t) * (1 + 0.3 * t) + ndimage.gaussian_filter(canvas, 15) * 4 * t
            img = ndimage.shift(img, -drift[f, t], order=3, mode="nearest")[32 : 32 + size, 32 : 32 + size]
            plane = (rng.poisson(img + 20) + 100).astype(np.uint16)
            xml = ome_xml([{"pinhole": 30.0 * 2**t}], plane.shape, pixel_um=0.05)
            tifffile.imwrite(folder / f"fov{f:02d}_step{t:02d}.ome.tif", plane[None], description=xml, metadata=None,
                             photometric="minisblack", compression=compression)
    return drift


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--fields", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--input-compression", default="none", choices=["none", "zlib", "lzw"], help="how the acquisition files are compressed")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest_cpu.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dehaze-bench-ingest-"))
    try:
        src = work / "series"
        src.mkdir()
        comp = None if args.input_compression == "none" else args.input_compression
        drift = make_series(src, args.size, args.fields, args.steps, compression=comp)
        files = sorted(src.glob("*.ome.tif"))
        nbytes = sum(tifffile.imread(p).nbytes for p in files)  # also warms the page cache
        manifest = AcquisitionManifest(position_pattern=r"fov(\d+)")
        t_read, t_ingest, stages = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for p in files:
                tifffile.imread(p)
            t_read.append(time.perf_counter() - t0)
            out = work / "ladder.zarr"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            report = ingest(src, out, manifest, show_progress=False)
            t_ingest.append(time.perf_counter() - t0)
            stages.append(report.stage_s)
        store = open_ladder(work / "ladder.zarr")
        errors = np.concatenate([store.extra(f, "shifts")[...] - drift[i] for i, f in enumerate(store.fields)])
        rms = float(np.sqrt(np.mean(np.sum(errors**2, axis=1))))
        read, ing = min(t_read), min(t_ingest)
        result = {
            "benchmark": "ingest throughput vs tifffile.imread of the same files",
            "command": "PYTHONPATH=. python benchmarks/ingest.py " + " ".join(sys.argv[1:]),
            "data": {"layout": "OME-TIFF, one file per field and step", "fields": args.fields, "steps": args.steps,
                     "shape_yx": [args.size, args.size], "dtype": "uint16", "input_compression": args.input_compression, "files": len(files), "mbytes": round(nbytes / 1e6, 2)},
            "tifffile_read_s": round(read, 4),
            "ingest_s": round(ing, 4),
            "ratio": round(read / ing, 3),
            "goal_ratio": 0.5,
            "ingest_mb_per_s": round(nbytes / 1e6 / ing, 2),
            "tifffile_mb_per_s": round(nbytes / 1e6 / read, 2),
            "registration_error_px_rms": round(rms, 4),
            "registration_residual_px": [store.field_meta(f).info["registration"]["residual_px"] for f in store.fields],
            "all_times_s": {"tifffile": [round(t, 4) for t in t_read], "ingest": [round(t, 4) for t in t_ingest]},
            "stages_s_of_fastest_run": stages[int(np.argmin(t_ingest))],
            "machine": machine_info(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = runs if isinstance(runs, dict) and "runs" in runs else {"runs": {}}
    runs["runs"][f"input_{args.input_compression}"] = result
    args.out.write_text(json.dumps(runs, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
