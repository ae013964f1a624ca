"""``dehaze export RUN -o model.zip``: a run as a BioImage Model Zoo model package (model spec 0.5), for
Fiji (deepImageJ), napari, ilastik and ``bioimageio.core``; and the way back: ``dehaze predict`` takes such
a package as a run (:func:`load_package`).

What a package holds (``rdf.yaml`` and the files it names):

* ``dehaze_unet.py``: the architecture, the source of :mod:`dehaze.models.unet` with :class:`DehazeNet`
  appended: the network a consumer runs, one normalised image (B, 1, H, W) in, its x_0 estimate
  (B, 1, H, W) out, H and W multiples of 2**depth. For a pixel (InDI) run it feeds the restorer the
  constant step t = s and source step s of the input step chosen at export (``step``, default the
  ladder's haziest): R(x_s, s, s), the one-shot estimate (``pixel-one-shot``); a restorer that reads the
  source image gets the one input in both of its channels, R(x_s, x_s, s, s).
* ``weights.pt`` (``pytorch_state_dict``: DehazeNet's state dict, the run's EMA weights where it kept them)
  and ``weights.torchscript.pt`` (``torchscript``: DehazeNet traced, its child).
* the normalisation as processing: dehaze's x_norm = (x - offset) / scale is the spec's
  ``fixed_zero_mean_unit_variance`` with mean = offset, std = scale (ADU) on the input, and its inverse
  x = x_norm * scale + offset is ``scale_linear`` (gain = scale, offset = offset) on the output, so both
  tensors are in camera ADU.
* ``test_input.npy`` (1, 1, N, N) float32 ADU: a centred crop of the first field of the run's training
  store at the chosen step; ``test_output.npy``: what the run's own network (through dehaze's strategy
  function and normalisation) makes of it.
* ``cover.png`` (input | output, 2:1), ``README.md`` (the documentation: training config, data provenance,
  normalisation, what the format cannot hold) and ``run.json`` (the run's resolved description).
* ``config.dehaze`` in rdf.yaml: the run's resolved description (kind, config, normalisation, data: store
  path and manifest sha256) and the export settings; :func:`load_package` rebuilds dehaze's network from it.

Only ``unet`` and ``pixel`` runs export (:data:`EXPORTABLE_KINDS`): a model in this format is one
deterministic network call between fixed pre- and postprocessing; HDN's and the flow restorer's outputs
are the mean of K posterior samples (random draws, where the format's test needs reproducible
outputs), and the latent kinds are several networks chained through an HVAE. Why iterative walks (the
InDI walk, the flow restorer's ODE walk) are not exported: ``WALKS`` below (in every package's README).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from dehaze.config import format_validation_error
from dehaze.errors import UserError
from dehaze.models.unet import UNet, sinusoidal_embedding
from dehaze.runs import RunInfo, checkpoint_step, load_model, read_run
from training.config import PixelModel, UNetModel

EXPORTABLE_KINDS = ("unet", "pixel")
PACKAGE_FORMAT = 1  # of config.dehaze; load_package refuses a newer one
RDF_FILE = "rdf.yaml"
ARCHITECTURE_FILE = "dehaze_unet.py"
STATE_DICT_FILE = "weights.pt"
TORCHSCRIPT_FILE = "weights.torchscript.pt"
STATE_PREFIX = "net."  # DehazeNet holds dehaze's network as .net
MAX_TEST_SIDE = 256  # px, the test tensors' side at most
HALO = 32  # px cropped from each side of an output tile by a tiling consumer: dehaze's own tile margin
LICENSE = "BSD-3-Clause"

WALKS = """\
A BioImage Model Zoo model (spec 0.5) is one network call between fixed pre- and postprocessing
operations: the format has no loop, no state carried from one call to the next, and none of its
processing operations draws random numbers.
An iterative restorer therefore exports only as a single module that runs its whole walk inside its
forward pass. The pixel restorer is exported at one step: the one-shot estimate R(x_s, s, s), which
dehaze measures at or above its own InDI walk (that walk is deterministic with a fixed schedule, so it
could be unrolled into one module, at one network evaluation per step). dehaze's flow restorer is not
expressible as its output is meant: its ODE walk (flow_steps Euler or Heun steps, a fixed schedule)
starts from Gaussian noise and gives one posterior sample, and the estimate is the mean (and std) of K
such samples. The noise would have to be a second input tensor that the consumer fills with N(0, 1)
values itself, or be drawn inside the package (in the module, or in a custom processing step) from a
fixed seed: CPU and CUDA draw different noise from one seed, so bioimageio's test, which compares the
output with the stored test output, would pass on one kind of device only, and every tile of every
image would get the same noise. Each tile would also cost K x flow_steps network evaluations. So dehaze exports no walk; `dehaze predict` on a package
runs every strategy the run's kind allows.
"""


class DehazeNet(nn.Module):
    """The exported network: one normalised image x (B, 1, H, W), H and W multiples of 2**depth, in; its
    normalised x_0 estimate (B, 1, H, W) out.

    ``unet``: the keyword arguments of :class:`UNet`. ``t`` and ``s``: the constant step and source step a
    time-conditioned (pixel) restorer is fed (ladder steps; None for the one-shot UNet, ``s`` None for a
    restorer conditioned on t alone). Their embedding, the output of the UNet's ``time_mlp`` (1, 4 x
    time_embed_dim), is a buffer that :meth:`fix_conditions` computes once, kept in the weights: it
    broadcasts over any batch, and it moves with the module to the device it runs on. (UNet.forward makes
    the embedding with ``torch.arange(device=t.device)``, which ``torch.jit.trace`` would fix to the CPU.)
    ``forward`` is :meth:`UNet.body` with that embedding; dehaze export checks it gives the run's output.
    """

    emb: torch.Tensor  # the buffer (conditioned only)

    def __init__(self, unet: dict, t: float | None = None, s: float | None = None) -> None:
        super().__init__()
        self.net = UNet(**unet)
        self.t, self.s = t, s
        self.conditioned = t is not None
        if self.conditioned:
            self.register_buffer("emb", torch.zeros(1, 4 * unet["time_embed_dim"]))

    @torch.no_grad()
    def fix_conditions(self) -> None:
        """Compute the embedding of the constant t (and s) from the network's weights (after loading them)."""
        dim = self.net.time_embed_dim
        assert dim is not None  # conditioned: the network is a time-conditioned (pixel) restorer
        feats = [sinusoidal_embedding(torch.tensor([float(c)]), dim) for c in (self.t, self.s) if c is not None]
        self.emb.copy_(self.net.time_mlp(torch.cat(feats, dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a restorer that reads the source image gets the input twice: the one-shot state x_t = x_s
        image = torch.cat([x, x], dim=1) if self.net.source_image else x
        return self.net.body(image, self.emb if self.conditioned else None)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote."""

    path: Path
    kind: str
    step: int  # the input step the package is made for (pixel: the constant t = s)
    test_shape: tuple[int, ...]  # (1, 1, N, N): the test input's
    format_version: str  # of the model spec the rdf.yaml follows
    test_status: str | None  # bioimageio.core's model test on the package ("passed"); None: bioimageio.core not installed
    test_summary: Any = None  # its ValidationSummary (every check it ran, in .details)


def exported_model(info: RunInfo) -> UNetModel | PixelModel:
    """The model config of a run that exports (:func:`refuse_kind` turned away every other kind)."""
    m = info.config.model
    assert isinstance(m, (UNetModel, PixelModel)), f"a {info.kind!r} run does not export (refuse_kind first)"
    return m


def unet_kwargs(info: RunInfo) -> dict[str, Any]:
    """The UNet arguments of a unet or pixel run's network (as its ``ModelKind.build`` makes it)."""
    m = exported_model(info)
    kwargs: dict[str, Any] = {"base_channels": m.base_channels, "depth": m.depth, "residual": m.residual}
    if info.kind == "pixel":
        assert isinstance(m, PixelModel)  # dehaze train writes a run's kind and its model config together
        kwargs.update(time_embed_dim=m.time_embed_dim, source_conditioned=m.path == "straight", source_image=m.source_image)
    return kwargs


def refuse_kind(run_dir: str | Path, kind: str) -> None:
    """One line naming what can be exported, for a run of any other kind."""
    if kind not in EXPORTABLE_KINDS:
        raise UserError(f"{run_dir}: a {kind!r} run cannot be exported; dehaze export packages unet runs and pixel runs "
                        "(at one input step, --step): a BioImage Model Zoo model is one deterministic network call, while "
                        "HDN and the flow restorer average random posterior samples and the latent kinds chain several networks")


def check_output(output: Path) -> None:
    """Refuse, before any work, an -o that is not a new ``.zip`` outside every store in a writable folder."""
    from dehaze.store import refuse_inside_store
    from dehaze.store.output import ensure_writable_parent

    if output.suffix.lower() != ".zip":
        raise UserError(f"{output}: a BioImage Model Zoo package is a .zip file; give -o NAME.zip")
    if output.is_symlink() or output.exists():
        raise UserError(f"{output}: exists; dehaze export never replaces a file: remove it or choose another -o")
    refuse_inside_store(output, "the package")
    ensure_writable_parent(output)


def _import_spec() -> Any:
    try:
        from bioimageio import spec
    except ImportError:
        raise UserError("dehaze export needs bioimageio.spec: pip install 'dehaze-microscopy[export]' (in a checkout: pip install -e '.[export]')") from None
    bioimageio_compat()
    return spec


class _HandlerWithoutInfo:
    """pydantic's wrap-serializer handler, called as ``handler(value, info)`` by bioimageio.spec 0.5.12 and
    forwarded as ``handler(value)``: pydantic 2.14 takes the second argument as an index key and refuses
    the info object (bioimageio.spec 0.5.14 makes the one-argument call itself)."""

    def __init__(self, handler: Any) -> None:
        self._handler = handler

    def __call__(self, value: Any, *_: Any) -> Any:
        return self._handler(value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


def bioimageio_compat() -> None:
    """Make bioimageio.spec 0.5.12 (the spec bioimageio.core 0.11 pins) serialise under pydantic >= 2.14.

    Its two wrap serialisers of file and weights descriptions (which validation runs too) pass pydantic's
    info object where pydantic 2.14 expects an index key, so a model description with files fails validation with
    "'index_key' is expected to be an integer or a string". Each is rebound in place (the serialisers hold
    the function objects) to call its unchanged body with a handler that drops that argument. A no-op for
    any other spec version, and when done once."""
    import types

    import pydantic
    from bioimageio import spec

    if not spec.__version__.startswith("0.5.12.") or tuple(int(v) for v in pydantic.VERSION.split(".")[:2]) < (2, 14):
        return
    from bioimageio.spec._internal import io_packaging
    from bioimageio.spec.model import v0_4

    for func in (io_packaging.package_file_descr_serializer, v0_4.package_weights):  # in two modules: one name each
        if getattr(func, "_dehaze_compat", False):
            continue
        func.__globals__["_dehaze_unpatched"] = types.FunctionType(func.__code__, func.__globals__, func.__name__,
                                                                   func.__defaults__, func.__closure__)
        func.__globals__["_DehazeHandlerWithoutInfo"] = _HandlerWithoutInfo
        func.__code__ = _compat_serializer.__code__
        func.__dict__["_dehaze_compat"] = True  # a function attribute (through __dict__: its type declares none)


if TYPE_CHECKING:  # not names of this module: _compat_serializer's code runs with the patched module's globals
    _dehaze_unpatched: Callable[..., Any]
    _DehazeHandlerWithoutInfo: type[_HandlerWithoutInfo]


def _compat_serializer(value: Any, handler: Any, info: Any) -> Any:
    """The code :func:`bioimageio_compat` gives a patched serialiser; its names are the patched module's globals."""
    return _dehaze_unpatched(value, _DehazeHandlerWithoutInfo(handler), info)  # noqa: F821


def _training_store(info: RunInfo) -> Any:
    from dehaze.store import open_ladder

    ref = info.data[0]
    try:
        store = open_ladder(ref.path)
    except UserError as err:
        raise UserError(f"the run's training store is needed for the test image: {err}") from None
    if store.meta.manifest_sha256 != ref.manifest_sha256:
        raise UserError(f"{ref.path}: holds another ladder than the run was trained on (manifest sha256 "
                        f"{store.meta.manifest_sha256[:12]}, run.json {ref.manifest_sha256[:12]}); the test image must come from its data")
    return store


def _pick_step(info: RunInfo, store: Any, step: int | None) -> int:
    """The input step: ``step`` checked against the steps the run was trained on; default the haziest."""
    steps = info.config.data.input_steps or list(range(1, store.meta.n_steps))
    if step is None:
        return max(steps)
    if step not in steps:
        raise UserError(f"--step {step}: the run was trained on input steps {', '.join(map(str, steps))} of "
                        f"{info.data[0].path}; choose one of them")
    return step


def _test_image(store: Any, step: int, multiple: int) -> np.ndarray:
    """(1, 1, N, N) float32 ADU: a centred square crop of the first field at ``step`` (middle z plane), N a
    multiple of ``multiple`` and at most MAX_TEST_SIDE."""
    image = store.image(store.fields[0])
    h, w = image.shape[-2:]
    side = min(h, w, MAX_TEST_SIDE) // multiple * multiple
    if side < multiple:
        raise UserError(f"{store.path}: fields of {h} x {w} px are smaller than the network's {multiple}-px multiple")
    y0, x0 = (h - side) // 2, (w - side) // 2
    planes = tuple(n // 2 for n in image.shape[1:-2])
    crop = np.asarray(image[(step, *planes, slice(y0, y0 + side), slice(x0, x0 + side))], dtype=np.float32)
    return crop[None, None]


@torch.no_grad()
def _run_network(info: RunInfo, model: nn.Module, x: np.ndarray, step: int) -> np.ndarray:
    """What dehaze predicts for ``x`` (B, 1, H, W) ADU seen at ``step``: its strategy on the normalised image,
    inverted back to ADU (B, 1, H, W) float32."""
    from dehaze.strategies import ModelBundle, one_shot_unet, pixel_indi

    norm = info.normalization
    xt = torch.from_numpy(norm.apply(x))
    if info.kind == "unet":
        out = one_shot_unet(ModelBundle(unet=model), xt, [float(step), 0.0])
    else:  # the one-shot estimate R(x_s, s, s): the walk's one step of size s
        out = pixel_indi(ModelBundle(pixel=model), xt, [float(step), 0.0])
    return norm.invert(out.numpy())


def _cover(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Input | output side by side (2:1 PNG), each shown between its own 0.1th and 99.9th percentiles
    (the hazy steps are far brighter than x_0), enlarged to at least 256 px high."""
    from PIL import Image

    def gray(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, [0.1, 99.9])
        return (np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255).astype(np.uint8)

    both = np.concatenate([gray(x[0, 0]), gray(y[0, 0])], axis=1)
    k = max(1, -(-256 // both.shape[0]))
    Image.fromarray(np.kron(both, np.ones((k, k), np.uint8))).save(path)


def _last_val_psnr(run_dir: Path) -> float | None:
    path = run_dir / "log.csv"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text().splitlines():
        parts = line.split(",")
        if len(parts) >= 3 and parts[1] == "val_psnr":
            with contextlib.suppress(ValueError):
                last = float(parts[2])
    return last


def _documentation(info: RunInfo, run_dir: Path, step: int, store: Any, side: int, trained_steps: int) -> str:
    import yaml

    norm, m = info.normalization, store.meta
    pinhole = m.pinhole_au[step] if step < len(m.pinhole_au) else None
    seen = f"step {step} of {m.n_steps - 1} (pinhole {pinhole} AU)" if pinhole is not None else f"step {step} of {m.n_steps - 1} (widefield)"
    if info.kind == "unet":
        what = ("The one-shot CARE-like UNet: x_0 = UNet(x) whatever the step the image was taken at. The test image "
                f"is {seen} of the training ladder.")
    else:
        what = (f"The time-conditioned pixel restorer (InDI) R(x_t, t, s), exported at the fixed input step s = {step}: "
                f"the network is fed t = s = {step} and so restores images taken at {seen}, in one step "
                "(dehaze's `pixel-one-shot` strategy). Images of other steps need another export (`--step`), or "
                "`dehaze predict` on this package, which rebuilds the whole restorer.")
    psnr = _last_val_psnr(run_dir)
    data = "\n".join(f"- `{d.path}` (manifest sha256 `{d.manifest_sha256}`)" for d in info.data)
    return f"""# dehaze {info.kind} restorer ({run_dir.name})

{what}

## Input and output

- input `raw`: one 2D image (B, 1, y, x), camera ADU as float32, y and x multiples of {2 ** exported_model(info).depth} px
  (the test input is {side} x {side} px); pixel size {m.pixel_size_um.get('y')} x {m.pixel_size_um.get('x')} µm.
- output `x0`: the estimate of the clean step x_0 (pinhole {m.pinhole_au[0]} AU), same shape, ADU as float32.
- tiling: crop {HALO} px from each side of an output tile (dehaze's own tile margin).

## Normalisation

dehaze scales every step with one affine map, x_norm = (x - offset) / scale, offset = {norm.offset!r} ADU (the
lowest 0.1th percentile over the training steps), scale = {norm.scale!r} ADU (the brightest 99.9th percentile minus
the offset). Preprocessing: `fixed_zero_mean_unit_variance` with mean = offset, std = scale. Postprocessing: its
inverse, `scale_linear` with gain = scale, offset = offset.

## Training

{trained_steps} optimiser steps{f'; last validation PSNR {psnr:.2f} dB' if psnr is not None else ''}; dehaze {info.dehaze_version}.
The resolved training config (also in `run.json` and under `config.dehaze` in rdf.yaml):

```yaml
{yaml.safe_dump(info.config.model_dump(mode="json"), sort_keys=False).rstrip()}
```

## Data provenance

Trained on the haze-ladder store(s):

{data}

{m.n_steps} steps, pinholes {', '.join('widefield' if p is None else f'{p} AU' for p in m.pinhole_au)}.

## Iterative walks

{WALKS}
## Validation

`test_input.npy` and `test_output.npy` are a crop of the training store and what dehaze's own network made of
it; `bioimageio test model.zip` reruns them with each weights format (dehaze export ran that test before writing
the package). To validate on unseen data, simulate or
ingest a held-out ladder and score it per step against its step 0:
`dehaze predict model.zip --input held-out.zarr -o pred.zarr` then
`dehaze evaluate pred.zarr --truth held-out.zarr --report report` (PSNR, SSIM, FRC per input step).
"""


def _rdf(info: RunInfo, step: int, store: Any, side: int, kwargs: dict[str, Any], spec: Any) -> dict[str, Any]:
    norm, m = info.normalization, store.meta
    multiple = 2 ** exported_model(info).depth
    torch_version = torch.__version__.split("+")[0]

    # a halo needs outputs larger than twice it: then the smallest input is the first multiple above 2 x HALO
    halo = HALO if side > 2 * HALO else 0
    smallest = (2 * halo // multiple + 1) * multiple if halo else multiple

    # No unit or scale on the spatial axes (the pixel size is in the README): bioimageio.spec 0.5.12 sizes an
    # output axis as int(ref_size * ref_scale / scale), and with a scale like 0.05 µm that is 96.00000000000001
    # for 96 px, which its own validation then refuses.
    def space(axis: str, size: Any, output: bool) -> dict[str, Any]:
        d = {"type": "space", "id": axis, "size": size}
        if output and halo:
            d["halo"] = halo
        return d

    def channel() -> dict[str, Any]:  # a new dict per use: yaml would write a shared one as an anchor
        return {"type": "channel", "channel_names": ["intensity"]}

    in_axes = [{"type": "batch"}, channel(), *(space(a, {"min": smallest, "step": multiple}, False) for a in ("y", "x"))]
    out_axes = [{"type": "batch"}, channel(), *(space(a, {"tensor_id": "raw", "axis_id": a}, True) for a in ("y", "x"))]
    kind = "one-shot UNet (CARE-like)" if info.kind == "unet" else f"pixel restorer (InDI) at input step {step}"
    description = (f"Widefield dehazing: the {kind} of a dehaze run, from a haze ladder of {m.n_steps} pinhole steps; "
                   "estimates the clean (smallest-pinhole) image from a hazy one. Trained on "
                   f"{info.data[0].path} (manifest sha256 {info.data[0].manifest_sha256}).")
    cite = [{"text": "Weigert et al. 2018, Content-aware image restoration (CARE)", "doi": "10.1038/s41592-018-0216-7"}]
    if info.kind == "pixel":
        cite.append({"text": "Delbracio & Milanfar 2023, Inversion by Direct Iteration (InDI)", "doi": "10.48550/arXiv.2303.11435"})
    return {
        "type": "model",
        "format_version": spec.ModelDescr.implemented_format_version,
        "name": f"dehaze {info.kind} restorer" + (f" step {step}" if info.kind == "pixel" else ""),
        "description": description[:1024],
        "authors": [{"name": "dehaze export"}],
        "cite": cite,
        "license": LICENSE,
        "tags": ["dehazing", "restoration", "widefield", "fluorescence-light-microscopy", "2d", "unet", "pytorch", "dehaze"],
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "attachments": [{"source": "run.json"}],
        "inputs": [{"id": "raw", "description": "hazy widefield image, camera ADU", "axes": in_axes,
                    "test_tensor": {"source": "test_input.npy"}, "sample_tensor": {"source": "sample_input.tif"}, "data": {"type": "float32"},
                    "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                                      {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": norm.offset, "std": norm.scale}}]}],
        "outputs": [{"id": "x0", "description": "estimate of the clean step x_0, camera ADU", "axes": out_axes,
                     "test_tensor": {"source": "test_output.npy"}, "sample_tensor": {"source": "sample_output.tif"}, "data": {"type": "float32"},
                     "postprocessing": [{"id": "scale_linear", "kwargs": {"gain": norm.scale, "offset": norm.offset}},
                                        {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]}],
        "weights": {
            "pytorch_state_dict": {"source": STATE_DICT_FILE, "pytorch_version": torch_version,
                                   "architecture": {"source": ARCHITECTURE_FILE, "callable": "DehazeNet", "kwargs": kwargs}},
            "torchscript": {"source": TORCHSCRIPT_FILE, "pytorch_version": torch_version, "parent": "pytorch_state_dict",
                            "comment": "DehazeNet traced (torch.jit.trace) from the state dict weights"},
        },
        "config": {"dehaze": {"package_format": PACKAGE_FORMAT, "kind": info.kind, "step": step,
                              "state_dict_prefix": STATE_PREFIX, "run": info.model_dump(mode="json")}},
    }


@contextlib.contextmanager
def _quiet_bioimageio():
    """Silence bioimageio's loguru log (every validation step) while it runs: dehaze prints one line."""
    from loguru import logger

    logger.disable("bioimageio")
    try:
        yield
    finally:
        logger.enable("bioimageio")


def export_run(run_dir: str | Path, output: str | Path, *, step: int | None = None) -> ExportResult:
    """Package a unet or pixel run as a BioImage Model Zoo model zip at ``output`` (see the module docstring).

    ``step``: the input step (pixel: the constant t = s fed to the restorer; unet: the step of the test
    image); default the haziest step the run was trained on. Nothing is written at ``output`` unless the
    whole package is made and valid (it is written beside it and renamed).
    """
    run_dir, output = Path(run_dir), Path(output)
    info = read_run(run_dir)
    refuse_kind(run_dir, info.kind)
    check_output(output)
    spec = _import_spec()
    store = _training_store(info)
    step = _pick_step(info, store, step)
    info, model = load_model(run_dir, "cpu")
    multiple = 2 ** exported_model(info).depth
    x = _test_image(store, step, multiple)
    y = _run_network(info, model, x, step)

    kwargs = unet_kwargs(info)
    t = float(step) if info.kind == "pixel" else None
    s = t if kwargs.get("source_conditioned") else None
    arch_kwargs: dict[str, Any] = {"unet": kwargs, "t": t, "s": s}
    wrapper = DehazeNet(**arch_kwargs)
    wrapper.net.load_state_dict(model.state_dict())
    if wrapper.conditioned:
        wrapper.fix_conditions()
    wrapper.eval()
    xn = torch.from_numpy(info.normalization.apply(x))
    with torch.no_grad():
        mine = info.normalization.invert(wrapper(xn).numpy())
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the format's torchscript weights need it
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(wrapper, xn, check_trace=False)
    if not np.allclose(mine, y, rtol=1e-5, atol=1e-5 * info.normalization.scale):
        raise RuntimeError("DehazeNet does not reproduce the run's network; the export wrapper is out of date")

    partial = output.with_name(f".{output.stem}.partial-{os.getpid()}.zip")
    try:
        with tempfile.TemporaryDirectory(prefix="dehaze-export-") as tmp:
            folder = Path(tmp)
            (folder / ARCHITECTURE_FILE).write_text(_architecture_source())
            torch.save(wrapper.state_dict(), folder / STATE_DICT_FILE)
            traced.save(str(folder / TORCHSCRIPT_FILE))
            np.save(folder / "test_input.npy", x)
            np.save(folder / "test_output.npy", y)
            import tifffile

            tifffile.imwrite(folder / "sample_input.tif", x[0, 0])  # what a person opens in Fiji: (y, x) float32 ADU
            tifffile.imwrite(folder / "sample_output.tif", y[0, 0])
            _cover(x, y, folder / "cover.png")
            (folder / "run.json").write_text(info.model_dump_json(indent=2))
            (folder / "README.md").write_text(_documentation(info, run_dir, step, store, x.shape[-1], checkpoint_step(run_dir)))
            import yaml

            (folder / RDF_FILE).write_text(yaml.safe_dump(_rdf(info, step, store, x.shape[-1], arch_kwargs, spec), sort_keys=False))
            _package(spec, folder, partial)
        summary = run_bioimageio_test(partial)
        if summary is not None and summary.status != "passed":
            raise RuntimeError(f"bioimageio.core's test failed on the exported package: {_failures(summary)}")
        os.replace(partial, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return ExportResult(output, info.kind, step, tuple(x.shape), spec.ModelDescr.implemented_format_version,
                        None if summary is None else summary.status, summary)


def _package(spec: Any, folder: Path, path: Path) -> None:
    """bioimageio.spec's packager: ``folder``'s rdf.yaml and the files it names (their sha256 added) zipped
    into ``path``, which it then loads and validates (format and files); an invalid package is a dehaze bug."""
    with _quiet_bioimageio():
        try:
            spec.save_bioimageio_package(folder / RDF_FILE, output_path=path)
        except ValueError as exc:
            raise RuntimeError(f"dehaze export made an invalid package: {' '.join(str(exc).split())}") from None


def _failures(summary: Any) -> str:
    """The failed checks of a bioimageio ValidationSummary, on one line."""
    failed = [f"{d.name}: {e.msg}" for d in summary.details if d.status == "failed" for e in d.errors]
    return "; ".join(failed) or str(summary.status)


def run_bioimageio_test(path: str | Path) -> Any | None:
    """bioimageio.core's own model test (what ``bioimageio test`` runs) on a package: its format, and each
    weights format reproducing the test output from the test input and running at other sizes and batch
    sizes. Returns its ValidationSummary (``.status``, ``.details``); None where bioimageio.core is not
    installed. Reads only the package's own files. The test seeds torch and NumPy and sets torch's
    deterministic-algorithms flag; all three are restored afterwards."""
    try:
        from bioimageio import core
    except ImportError:
        return None
    bioimageio_compat()
    torch_rng, numpy_rng, deterministic = torch.get_rng_state(), np.random.get_state(), torch.are_deterministic_algorithms_enabled()
    try:
        with _quiet_bioimageio(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load, deprecated in torch 2.13
            return core.test_model(str(path))
    finally:
        torch.set_rng_state(torch_rng)
        np.random.set_state(numpy_rng)
        torch.use_deterministic_algorithms(deterministic)


def _architecture_source() -> str:
    """The source of dehaze's UNet module followed by :class:`DehazeNet`: one file, importable on its own (torch only)."""
    from dehaze.models import unet as unet_module

    return (inspect.getsource(unet_module).rstrip() + "\n\n\n# ---- the exported network (dehaze.export.DehazeNet) ----\n"
            + inspect.getsource(DehazeNet))


# ---- the way back: dehaze predict with a package as a run ------------------------------------------------
def is_package(path: str | Path) -> bool:
    """True for a zip file (a BioImage Model Zoo package); run directories are folders."""
    path = Path(path)
    return path.is_file() and zipfile.is_zipfile(path)


def load_package(path: str | Path, device: str | torch.device = "cpu") -> tuple[RunInfo, nn.Module]:
    """The run a ``dehaze export`` package was made from: its description (``config.dehaze.run``) and dehaze's
    network rebuilt from its config with the package's ``pytorch_state_dict`` weights (eval mode, on ``device``).
    One-line UserErrors for a package it cannot use."""
    import yaml

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            rdf_name = next((n for n in (RDF_FILE, "bioimageio.yaml") if n in names), None)
            if rdf_name is None:
                raise UserError(f"{path}: a zip file without rdf.yaml, not a BioImage Model Zoo package")
            rdf = yaml.safe_load(zf.read(rdf_name))
            config = rdf.get("config") if isinstance(rdf, dict) else None
            ours = config.get("dehaze") if isinstance(config, dict) else None
            if not isinstance(ours, dict) or "run" not in ours:
                raise UserError(f"{path}: a BioImage Model Zoo package that dehaze did not export (no config.dehaze in {rdf_name}); "
                                "dehaze predict takes packages made by `dehaze export`")
            fmt = ours.get("package_format")
            if not isinstance(fmt, int) or fmt > PACKAGE_FORMAT:
                raise UserError(f"{path}: package format {fmt} is not one this dehaze reads ({PACKAGE_FORMAT}); upgrade dehaze")
            try:
                info = RunInfo.model_validate(ours["run"])
            except ValidationError as err:
                raise UserError(format_validation_error(err, f"{path} (config.dehaze.run)")) from None
            weights = (rdf.get("weights") or {}).get("pytorch_state_dict") or {}
            source = weights.get("source")
            if source not in names:
                raise UserError(f"{path}: its pytorch_state_dict weights ({source}) are not in the package")
            blob = zf.read(source)
    except zipfile.BadZipFile as exc:
        raise UserError(f"{path}: a damaged zip file ({exc}); export the run again") from None
    except yaml.YAMLError:
        raise UserError(f"{path}: its rdf.yaml is not readable YAML; export the run again") from None
    if weights.get("sha256") and hashlib.sha256(blob).hexdigest() != weights["sha256"]:
        raise UserError(f"{path}: {source} does not match its sha256 in rdf.yaml (damaged package); export the run again")
    refuse_kind(path, info.kind)
    try:
        state = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise UserError(f"{path}: {source} is not a loadable state dict ({type(exc).__name__})") from None
    prefix = ours.get("state_dict_prefix", STATE_PREFIX)
    from dehaze.models import build_network

    model = build_network(info.config.model)
    try:
        model.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})  # not emb
    except (RuntimeError, AttributeError) as exc:
        raise UserError(f"{path}: its weights do not fit the {info.kind} model in config.dehaze.run ({str(exc).splitlines()[0]})") from None
    return info, model.to(device).eval()

