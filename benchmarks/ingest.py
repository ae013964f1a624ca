"""Ingestion throughput against reading the same files with tifffile alone, side by side in one run.

Data: a folder of OME-TIFFs as a confocal writes them, one file per (field, pinhole step), with known drift
and haze. ``ratio = t_tifffile_read / t_ingest`` (>= 0.5 is the goal): ingestion includes discovery,
reading, NaN checks, registration, sub-pixel resampling, Blosc-lz4 compression and the statistics.

A third side bounds what any ingestion can reach: ``store only`` reads the same files with tifffile and
writes their raw pixels, unregistered, into a ladder store (the same compressor, chunks and threads, no
registration, shifts or statistics). ``floor_ratio = t_tifffile_read / t_store_only`` is the ratio of an
ingestion that did nothing else; where it is under 0.5, the goal cannot be met on that machine.

Each case alternates the three sides ``--repeat`` times (best of each, warm page cache). The cases: image
sizes (registration's cost per step is fixed by its 256^2 window, the rest grows with the pixels) times
input compression (uncompressed files read at memory-copy speed; zlib is what many exporters write). The
registration error against the known drift is recorded too.

    PYTHONPATH=. python benchmarks/ingest.py [--cases 512x4 2048x2] [--inputs none zlib] [--steps 5] [--repeat 3]

(``SIZExFIELDS``: square images of SIZE px, FIELDS fields of view.)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from acq_data import ome_xml  # noqa: E402
from machine import machine_info, write_result  # noqa: E402

from acquisition.ingest import in_threads, ingest  # noqa: E402 - after the sys.path set-up above
from acquisition.manifest import AcquisitionManifest  # noqa: E402
from dehaze.store import DatasetMeta, create_ladder, field_name, open_ladder  # noqa: E402


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


def store_only(files_per_field: list[list[Path]], out: Path, meta: DatasetMeta) -> None:
    """The least an ingestion does: read each field's files with tifffile and write the raw (h, y, x) pixels
    into a ladder store (the store's compressor and chunks, fields side by side as ingest runs them)."""
    store, _ = create_ladder(out, meta, overwrite=True)

    def write(i: int) -> None:
        planes = [tifffile.imread(p) for p in files_per_field[i]]
        store.write_field(field_name(i), np.stack(planes).reshape(len(planes), *planes[0].shape[-2:]))

    list(in_threads(write, range(len(files_per_field)), len(files_per_field)))


def run_case(work: Path, size: int, fields: int, steps: int, compression: str, repeat: int) -> dict[str, Any]:
    """One case: write the series, then alternate tifffile reads and ingestions; the best of each."""
    src = work / f"series_{size}_{compression}"
    src.mkdir()
    drift = make_series(src, size, fields, steps, compression=None if compression == "none" else compression)
    files = sorted(src.glob("*.ome.tif"))
    nbytes = sum(tifffile.imread(p).nbytes for p in files)  # also warms the page cache
    manifest = AcquisitionManifest(position_pattern=r"fov(\d+)")
    out = work / f"ladder_{size}_{compression}.zarr"
    floor_out = work / f"store_only_{size}_{compression}.zarr"
    per_field = [files[f * steps : (f + 1) * steps] for f in range(fields)]  # sorted: fov, then step
    t_read, t_ingest, t_floor, stages = [], [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for p in files:
            tifffile.imread(p)
        t_read.append(time.perf_counter() - t0)
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        report = ingest(src, out, manifest, show_progress=False)
        t_ingest.append(time.perf_counter() - t0)
        stages.append(report.stage_s)
        meta = open_ladder(out).meta.model_copy(update={"status": "incomplete", "step_stats": None, "normalization": None})
        shutil.rmtree(floor_out, ignore_errors=True)
        t0 = time.perf_counter()
        store_only(per_field, floor_out, meta)
        t_floor.append(time.perf_counter() - t0)
    store = open_ladder(out)
    errors = np.concatenate([store.extra(f, "shifts")[...] - drift[i] for i, f in enumerate(store.fields)])
    read, ing, floor = min(t_read), min(t_ingest), min(t_floor)
    return {
        "data": {"layout": "OME-TIFF, one file per field and step", "fields": fields, "steps": steps, "shape_yx": [size, size],
                 "dtype": "uint16", "input_compression": compression, "files": len(files), "mbytes": round(nbytes / 1e6, 2)},
        "tifffile_read_s": round(read, 4),
        "ingest_s": round(ing, 4),
        "ratio": round(read / ing, 3),
        "goal_ratio": 0.5,
        "store_only_s": round(floor, 4),
        "floor_ratio": round(read / floor, 3),
        "ingest_mb_per_s": round(nbytes / 1e6 / ing, 2),
        "tifffile_mb_per_s": round(nbytes / 1e6 / read, 2),
        "registration_error_px_rms": round(float(np.sqrt(np.mean(np.sum(errors**2, axis=1)))), 4),
        "registration_residual_px": [store.field_meta(f).info["registration"]["residual_px"] for f in store.fields],
        "all_times_s": {"tifffile": [round(t, 4) for t in t_read], "ingest": [round(t, 4) for t in t_ingest],
                        "store_only": [round(t, 4) for t in t_floor]},
        "stages_s_of_fastest_run": stages[int(np.argmin(t_ingest))],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["512x4", "2048x2"], help="SIZExFIELDS: square images of SIZE px, FIELDS fields")
    ap.add_argument("--inputs", nargs="+", default=["none", "zlib"], choices=["none", "zlib", "lzw"], help="how the acquisition files are compressed")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest_cpu.json")
    args = ap.parse_args()
    cases = []
    for case in args.cases:
        size, _, fields = case.partition("x")
        if not (size.isdigit() and fields.isdigit()):
            ap.error(f"--cases {case}: write SIZExFIELDS, e.g. 512x4")
        cases.append((int(size), int(fields)))
    work = Path(tempfile.mkdtemp(prefix="dehaze-bench-ingest-"))
    results = {}
    try:
        for size, fields in cases:
            for compression in args.inputs:
                r = run_case(work, size, fields, args.steps, compression, args.repeat)
                results[f"{size}px_x{fields}_{compression}"] = r
                print(f"{size}^2 x {fields} fields x {args.steps} steps, input {compression:>4}: tifffile {r['tifffile_read_s']:.3f} s, "
                      f"ingest {r['ingest_s']:.3f} s, ratio {r['ratio']:.3f} (goal 0.5; store only {r['store_only_s']:.3f} s, "
                      f"floor ratio {r['floor_ratio']:.3f}), registration error {r['registration_error_px_rms']:.4f} px RMS")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {
        "benchmark": "ingest throughput vs tifffile.imread of the same files",
        "command": "PYTHONPATH=. python benchmarks/ingest.py " + " ".join(sys.argv[1:]),
        "cases": results,
        "machine": machine_info(),
    }
    write_result(args.out, record)


if __name__ == "__main__":
    main()
