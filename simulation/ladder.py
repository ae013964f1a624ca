"""Simulate a haze ladder store from a manifest: plan once, then every field in parallel on dask.

Stages (shapes for one field, T+1 steps, K kept planes):

1. ``plan_ladder``: PSF window, one PSF per step (microsim physics, see :mod:`simulation.optics`) and its
   transform (OTF, real: the PSFs are symmetric), shared by every field.
2. ``simulate_field``: truth (nz, ny, nx) from MatsLines -> 2-D transforms of its planes (grouped by
   distance to the kept plane when the PSF is even in z) -> optical image (T+1, K, ny, nx) photons/s at
   the kept planes -> camera values (uint16) with independent noise per step, the noise-free
   expectation (float32 ADU) and the truth at the kept planes.
3. ``simulate_ladder``: creates (or resumes) the store, runs the missing fields on dask (threads locally,
   or a dask.distributed scheduler), each task writing its own field, then records the statistics.

Brightness: each field gets one photon scale, set so that the brightest pixels (99.9th percentile) of the
reference pinhole (``camera.peak_reference``, 1 AU by default; simulated for the scale alone when it is not
a step) receive ``camera.peak_photons_per_s``. The other steps are as much brighter or dimmer as the optics
make them: with the physical photon budget (``optics.psf_normalization``) a wider pinhole is brighter.

Determinism: every random draw is seeded from (manifest seed, field index[, step]), so a field is the same
whichever worker makes it, in whatever order.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dehaze.errors import UserError
from dehaze.manifests import SimulationManifest
from dehaze.progress import progress_bar
from dehaze.store import DatasetMeta, LadderStore, field_name, finalize_with_step_stats, open_ladder, writing_output
from simulation.camera import camera_image, expected_adu
from simulation.forward import FoldedPlaneConvolver
from simulation.optics import PsfWindow, ladder_psfs, psf_window
from simulation.sample import field_seed, render_truth

PEAK_PERCENTILE = 99.9


@dataclass
class LadderPlan:
    """What every field of a ladder shares: the manifest, the PSF window and one OTF per step.

    ``otfs`` holds one more OTF than there are steps when the brightness reference is not a step (it is
    simulated for the photon scale alone); ``reference`` is the index of the reference's OTF.
    """

    manifest: SimulationManifest
    window: PsfWindow
    convolver: FoldedPlaneConvolver
    otfs: list[np.ndarray]  # FoldedPlaneConvolver.otf: (planes, L_y//2+1, L_x//2+1) float32
    reference: int = 0

    @property
    def n_steps(self) -> int:
        return self.manifest.pinhole.n_steps


def reference_pinhole(manifest: SimulationManifest) -> tuple[float | None, int | None]:
    """(pinhole in AU or None for widefield, step index or None if no step has it) of the brightness reference."""
    ref, steps = manifest.camera.peak_reference, manifest.pinhole.pinhole_au
    au = steps[0] if ref == "cleanest" else None if ref == "widefield" else float(ref)
    for t, step in enumerate(steps):
        if (step is None and au is None) or (step is not None and au is not None and np.isclose(step, au, rtol=1e-9, atol=0)):
            return au, t
    return au, None


def photometry(manifest: SimulationManifest) -> dict[str, Any]:
    """How the brightness of the steps was set (recorded in the store's root metadata)."""
    au, step = reference_pinhole(manifest)
    physical = manifest.optics.psf_normalization == "physical"
    return {
        "psf_normalization": manifest.optics.psf_normalization,
        "peak_photons_per_s": manifest.camera.peak_photons_per_s,
        "peak_percentile": PEAK_PERCENTILE,
        "reference": "widefield" if au is None else f"{au:g} AU",
        "reference_pinhole_au": au,
        "reference_step": step,  # None: simulated for the scale alone
        "note": (
            "each field's photon scale puts the 99.9th percentile of the reference pinhole's noise-free image at "
            "peak_photons_per_s; "
            + ("the other steps pass the light their pinhole passes (a wider pinhole is brighter, widefield passes all)"
               if physical else "every step's PSF sums to 1 (microsim's normalize='sum'; constant photon budget)")
        ),
    }


@dataclass
class FieldResult:
    """One simulated field. ``image``/``noise_free``: (h, [z,] y, x); ``truth``: ([z,] y, x)."""

    image: np.ndarray
    noise_free: np.ndarray
    truth: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def plan_ladder(manifest: SimulationManifest, fft_workers: int = 1) -> LadderPlan:
    """Build the PSFs and OTFs of every step (once per ladder, reused for every field)."""
    vol, pin = manifest.volume, manifest.pinhole
    ref_au, ref_step = reference_pinhole(manifest)
    pinholes = pin.pinhole_au if ref_step is not None else [*pin.pinhole_au, ref_au]
    widest = max(a for a in pinholes if a is not None)  # steps_au is never empty
    window = psf_window(manifest.optics, vol.field_shape_yx, vol.nz, vol.kept_planes, widest)
    psfs = ladder_psfs(manifest.optics, window, pinholes, workers=fft_workers, folded=True)
    convolver = FoldedPlaneConvolver(
        (vol.nz, *vol.field_shape_yx), (window.nz, window.n, window.n), psfs[0].z_symmetric, workers=fft_workers
    )
    reference = ref_step if ref_step is not None else pin.n_steps
    return LadderPlan(manifest, window, convolver, [convolver.otf(p) for p in psfs], reference)


def haze_index(optical: np.ndarray) -> float:
    """Background over peak of a noise-free image: 0 for crisp structure on black, 1 for a flat haze."""
    peak = float(np.percentile(optical, PEAK_PERCENTILE))
    return float(np.median(optical) / peak) if peak > 0 else 0.0


def simulate_field(plan: LadderPlan, field_index: int) -> FieldResult:
    """Simulate all steps of one field (see the module docstring for the stages)."""
    m = plan.manifest
    kept = m.volume.kept_planes
    truth = render_truth(m, field_index)
    optical = plan.convolver.field_planes(truth, plan.otfs, kept)  # (h [+ reference], K, y, x)
    np.maximum(optical, 0, out=optical)  # FFT round-off can dip a hair below zero
    # One photon scale per field, set on the reference pinhole: brightness differences between steps are physics.
    ref = optical[plan.reference]
    peak = float(np.percentile(ref, PEAK_PERCENTILE)) or float(ref.max())
    optical = optical[: plan.n_steps]
    photons_per_s = optical * np.float32(m.camera.peak_photons_per_s / peak if peak > 0 else 0.0)
    image = np.stack(
        [
            camera_image(photons_per_s[t], m.camera, np.random.default_rng(field_seed(m.seed, field_index, t)))
            for t in range(plan.n_steps)
        ]
    )
    noise_free = expected_adu(photons_per_s, m.camera)
    truth_kept = truth[kept]
    if len(kept) == 1:  # 2-D ladder: drop the z axis
        image, noise_free, truth_kept = image[:, 0], noise_free[:, 0], truth_kept[0]
    info = {"field_index": field_index, "haze_index": [haze_index(o) for o in optical], "photon_scale": peak}
    return FieldResult(image=image, noise_free=noise_free, truth=truth_kept, info=info)


def dataset_meta(manifest: SimulationManifest) -> DatasetMeta:
    """Dataset-level metadata of a simulated store (before its statistics are known)."""
    vol, opt, pin = manifest.volume, manifest.optics, manifest.pinhole
    spatial = ["y", "x"] if len(vol.kept_planes) == 1 else ["z", "y", "x"]
    px = {"z": opt.z_step_um, "y": opt.pixel_size_um, "x": opt.pixel_size_um}
    return DatasetMeta(
        source="simulation",
        manifest=manifest.model_dump(mode="json"),
        manifest_sha256=manifest.sha256(),
        n_steps=pin.n_steps,
        pinhole_au=pin.pinhole_au,
        pinhole_units_source="manifest (Airy units, 1 AU = 1.22 lambda_em / NA)",
        widefield_steps=[pin.n_steps - 1] if pin.widefield_last else [],
        spatial_axes=spatial,
        pixel_size_um={a: px[a] for a in spatial},
        fields=[field_name(i) for i in range(manifest.n_fields)],
        normalization={"kind": "offset_percentile", "offset_adu": manifest.camera.offset_adu},
        photometry=photometry(manifest),
    )


def _simulate_and_write(field_index: int, plan: LadderPlan, store_path: str) -> int:
    """Dask task: simulate one field and write it into the store (each task owns its field group)."""
    result = simulate_field(plan, field_index)
    store = open_ladder(store_path, require_complete=False)
    store.write_field(
        field_name(field_index), result.image, {"noise_free": result.noise_free, "truth": result.truth}, result.info
    )
    return field_index


def _run_on_dask(task: Callable[..., int], indices: list[int], plan: LadderPlan, store_path: str,
                 workers: int, client: Any | None, show_progress: bool) -> None:
    """Run ``task(i, plan, store_path)`` for each index on dask (local threads, or ``client``'s cluster)."""
    bar = progress_bar(total=len(indices), desc="simulating fields", unit="field", disable=not show_progress)
    if client is not None:
        from distributed import as_completed

        shared = client.scatter(plan, broadcast=True)
        futures = client.map(task, indices, plan=shared, store_path=store_path, pure=False)
        for fut in as_completed(futures):
            fut.result()
            bar.update(1)
    else:
        import dask
        from dask.callbacks import Callback

        tasks = [dask.delayed(task, pure=False)(i, plan, store_path, dask_key_name=f"field-{i}") for i in indices]

        class _Tick(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001 - dask's signature
                if isinstance(key, str) and key.startswith("field-"):
                    bar.update(1)

        with _Tick():
            dask.compute(*tasks, scheduler="threads", num_workers=workers)
    bar.close()


def connect_scheduler(address: str, timeout_s: float = 10.0) -> Any:
    """A dask.distributed client for ``address``; a one-line UserError if it cannot be reached."""
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).split("\n")[0]
        raise UserError(f"--scheduler {address}: cannot connect ({reason}); start the scheduler or fix the address") from None


@dataclass
class SimulationReport:
    """What ``simulate_ladder`` did: the store, its state before (new, resumed, complete) and the fields computed."""

    store: LadderStore
    state: str  # "new", "resumed" or "complete" (nothing to do)
    fields_computed: int


def simulate_ladder(
    manifest: SimulationManifest,
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> SimulationReport:
    """Simulate ``manifest`` into the ladder store ``out``, resuming an interrupted run of the same manifest."""
    # Connect first: an unreachable scheduler must not leave an empty store behind.
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(connect_scheduler(scheduler)) if scheduler else None
        # one writer per store (a second simulate is refused); a store of this manifest resumes or is complete
        output = stack.enter_context(writing_output(out, dataset_meta(manifest), overwrite=overwrite))
        store, state = output.open(), output.state
        if state == "complete":
            return SimulationReport(store, state, 0)
        done = store.completed_fields()
        todo = [i for i in range(manifest.n_fields) if field_name(i) not in done]
        fft_workers = max(1, (os.cpu_count() or 1) // max(1, workers)) if client is None else 1
        plan = plan_ladder(manifest, fft_workers=fft_workers)
        _run_on_dask(_simulate_and_write, todo, plan, str(store.path), max(1, workers), client, show_progress)
        finalize_with_step_stats(store)
    return SimulationReport(store, state, len(todo))
