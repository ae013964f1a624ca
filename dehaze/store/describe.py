"""``dehaze info``: a readable summary of a store."""

from __future__ import annotations

from dehaze.store.ladder import LadderStore
from dehaze.store.layout import IMAGE_ARRAY


def describe_ladder(store: LadderStore) -> str:
    """A readable multi-line summary for ``dehaze info``."""
    m = store.meta
    lines = [
        f"{store.path}  ({m.source}, format {m.format_version}, {m.status})",
        f"  fields: {len(m.fields)}   steps: {m.n_steps}   axes: {' '.join(m.axes)}",
    ]
    if m.fields and m.fields[0] in store.root and IMAGE_ARRAY in store.group(m.fields[0]):
        img = store.zarr_array(m.fields[0], IMAGE_ARRAY)
        lines.append(f"  image shape per field: {img.shape} {img.dtype}, chunks {img.chunks}")
    px = ", ".join(f"{a}={v:g}" for a, v in m.pixel_size_um.items())
    lines.append(f"  pixel size (µm): {px}")
    if m.pinhole_units_source:
        lines.append(f"  pinhole values from: {m.pinhole_units_source}")
    header = "  step  pinhole_au  pinhole_um      mean       std     p99.9  haze_index"
    lines.append(header)
    for t in range(m.n_steps):
        au = m.pinhole_au[t]
        au_s = "widefield" if t in m.widefield_steps else ("-" if au is None else f"{au:g}")
        um_s = "-" if not m.pinhole_um else f"{m.pinhole_um[t]:g}"  # 6 digits: a 103.5 µm pinhole is not 104
        s = m.step_stats[t] if m.step_stats else None
        stats = f"{s.mean:9.1f} {s.std:9.1f} {s.p999:9.1f} {('-' if s.haze_index is None else f'{s.haze_index:.3f}'):>11}" if s else "        (not yet computed)"
        lines.append(f"  {t:>4}  {au_s:>10}  {um_s:>10} {stats}")
    return "\n".join(lines)
