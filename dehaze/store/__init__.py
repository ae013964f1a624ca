"""The ladder store: the only code in dehaze that reads or writes haze-ladder stores.

Layout (Zarr v2, OME-NGFF 0.4, nested chunk keys)::

    ladder.zarr/
      .zattrs            {"dehaze": DatasetMeta}        dataset-level metadata (see DatasetMeta)
      field_000/         OME-NGFF 0.4 image, one level:
        .zattrs          {"multiscales": [...], "dehaze": FieldMeta}
        0                (h, y, x) or (h, z, y, x) uint16 camera values, chunks (1, [1,] 256, 256)
        noise_free       same shape, float32: expected camera value without noise   (simulation only)
        truth            (y, x) or (z, y, x) float32: fluorophore density             (simulation only)
      field_001/ ...

The axis ``h`` indexes the degradation step (0 cleanest ... T haziest); it is typed ``degradation``,
never ``time``, so NGFF readers do not mistake it for time.

Crash safety: the dataset metadata says ``status: incomplete`` until every field is written; a field's
own metadata gets ``complete: true`` only after all its arrays are on disk. An interrupted writer leaves a
store that :func:`check_ladder` reports as incomplete and that a rerun of the same job completes.

Modules, one job each:

- :mod:`~dehaze.store.layout`: array names, chunk shapes, the compressor, field names
- :mod:`~dehaze.store.meta`: the dehaze metadata schemas (root and field)
- :mod:`~dehaze.store.ngff`: the OME-NGFF 0.4 metadata of a field group
- :mod:`~dehaze.store.chunks`: missing and corrupt chunks, found and named
- :mod:`~dehaze.store.ladder`: :class:`LadderStore`, :class:`LadderArray`, :func:`open_ladder`
- :mod:`~dehaze.store.output`: the output lifecycle (paths, locks, create/resume/refuse/overwrite)
- :mod:`~dehaze.store.stats`: per-step intensity statistics
- :mod:`~dehaze.store.check`, :mod:`~dehaze.store.describe`: ``dehaze check`` and ``dehaze info``
- :mod:`~dehaze.store.latent_cache`: HVAE encodings of a store
- :mod:`~dehaze.store.memory`: this machine's memory, for refusing sizes before allocation
"""

from dehaze.store.check import check_ladder
from dehaze.store.chunks import (
                                 MAX_LISTED_CHUNKS,
                                 CheckedDirectoryStore,
                                 ChunkMissing,
                                 DamagedStore,
                                 chunk_problem,
                                 existing_chunk_keys,
                                 missing_chunk_keys,
)
from dehaze.store.describe import describe_ladder
from dehaze.store.ladder import LadderArray, LadderStore, open_ladder
from dehaze.store.latent_cache import LATENT_FORMAT_VERSION, LatentCache, LatentCacheMeta, create_latent_cache, open_latent_cache
from dehaze.store.layout import CHUNK_YX, IMAGE_ARRAY, field_name
from dehaze.store.memory import format_bytes, physical_memory_bytes
from dehaze.store.meta import FORMAT_VERSION, DatasetMeta, FieldMeta, PredictionInfo, StepStats
from dehaze.store.ngff import NGFF_VERSION, ngff_multiscales
from dehaze.store.output import (
                                 LOCK_SUFFIX,
                                 OutputPlan,
                                 check_output_store,
                                 create_ladder,
                                 ensure_writable_parent,
                                 lock_file,
                                 make_output_folder,
                                 output_lock,
                                 plan_output,
                                 refuse_foreign_files,
                                 refuse_inside_store,
                                 writing_output,
)
from dehaze.store.stats import STATS_PIXELS_PER_STEP, finalize_with_step_stats, stats_samples, step_stats_from_samples, summarize

__all__ = [
    "CHUNK_YX", "FORMAT_VERSION", "IMAGE_ARRAY", "LATENT_FORMAT_VERSION", "LOCK_SUFFIX", "MAX_LISTED_CHUNKS",
    "NGFF_VERSION", "STATS_PIXELS_PER_STEP", "CheckedDirectoryStore", "ChunkMissing", "DamagedStore", "DatasetMeta",
    "FieldMeta", "LadderArray", "LadderStore", "LatentCache", "LatentCacheMeta", "OutputPlan", "PredictionInfo", "StepStats",
    "check_ladder", "check_output_store", "chunk_problem", "create_ladder", "create_latent_cache", "describe_ladder",
    "ensure_writable_parent", "existing_chunk_keys", "field_name", "finalize_with_step_stats", "format_bytes",
    "lock_file", "make_output_folder", "missing_chunk_keys", "ngff_multiscales", "open_ladder", "open_latent_cache",
    "output_lock", "physical_memory_bytes", "plan_output", "refuse_foreign_files", "refuse_inside_store", "stats_samples",
    "step_stats_from_samples", "summarize", "writing_output",
]
