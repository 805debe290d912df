"""A stand-in accelerator for machines without a GPU: tensors that say they live on another device but compute on the
CPU, and that raise as CUDA does when an operation mixes them with CPU tensors (the device harness of `make test`).

    from hpnb.testing import fake_accelerator

    with fake_accelerator() as device:          # device.type == "meta": the stand-in for "cuda"
        x = torch.randn(4, 3).to(device)        # an accelerator tensor with real values
        torch.nn.Linear(3, 2).to(device)(x)     # fine: everything on the accelerator
        torch.nn.Linear(3, 2)(x)                # DeviceMixError, as CUDA's "Expected all tensors to be on the same device"

Why `meta` and not `cuda`: autograd's engine initialises the CUDA runtime for any tensor that reports a CUDA device
(stream guards in gradient accumulation), which aborts the process on a machine without a driver. The `meta` device
has a no-op guard, and nothing in hpnb uses real meta tensors, so it is free to stand for "not the CPU". hpnb branches
on `hpnb.utils.on_accelerator(device)` (any device but the CPU), so the harness takes the GPU code paths: the device
generators, the fp16 criteria, the non-blocking copies.

What raises, as on a real GPU:
- an operation whose non-scalar tensor arguments sit on the CPU and on the accelerator (0-d CPU tensors are allowed,
  as PyTorch allows them; so are CPU index tensors, as CUDA indexing accepts them);
- a random draw on the accelerator from a CPU generator, or on the CPU from an accelerator generator
  (`hpnb.utils.device_generator` makes the right one);
- `.numpy()` of an accelerator tensor (PyTorch's own RuntimeError for tensor subclasses);
- a real (data-less) meta tensor, e.g. from `torch.load(map_location=device)`: load on the CPU, then move.

Saved with `torch.save`, an accelerator tensor is written as its CPU values (what `torch.load(map_location="cpu")`
gives back on a machine without a GPU), so checkpoints round-trip through the same code path as on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from hpnb.utils import GENERATORS, pick_device

FAKE = torch.device("meta")  # the stand-in accelerator


class DeviceMixError(RuntimeError):
    """An operation mixed CPU and accelerator tensors (or generators), which a real GPU refuses."""


class AcceleratorTensor(torch.Tensor):
    """A tensor on the stand-in accelerator: reports `FAKE` as its device, holds its values in `elem` (a CPU tensor)."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.size(),
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=FAKE,
            requires_grad=elem.requires_grad,
        )
        out.elem = elem
        return out

    def __repr__(self) -> str:
        return f"AcceleratorTensor({self.elem!r})"

    @property
    def is_meta(self) -> bool:
        return False  # it has values: nn.Module.load_state_dict must copy into it (it skips real meta parameters)

    def __reduce_ex__(self, protocol):
        return self.elem.detach().__reduce_ex__(protocol)  # saved as its CPU values

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


_MARK = 1 << 63  # the seed bit that marks a generator of the stand-in accelerator (hpnb seeds below it)


class AcceleratorGenerator(torch.Generator):
    """A generator of the stand-in accelerator: a CPU generator underneath, refused for draws on the CPU.

    The dispatcher hands an operation a new Python object for the same generator, so the mark travels in the seed:
    `manual_seed(s)` seeds the CPU generator with s | 2⁶³ (a real GPU's stream differs from the CPU's anyway)."""

    def manual_seed(self, seed: int) -> AcceleratorGenerator:
        super().manual_seed((int(seed) & (_MARK - 1)) | _MARK)
        return self


GENERATORS[FAKE.type] = AcceleratorGenerator  # what hpnb.utils.device_generator makes for the stand-in device


def _is_accelerator_generator(gen: torch.Generator) -> bool:
    return gen.device.type == "cpu" and gen.initial_seed() >= _MARK


# operations that legitimately take tensors of two devices (copies, CPU index tensors) or report a scalar
_CROSS = {
    "aten._to_copy.default",
    "aten.copy_.default",
    "aten.index.Tensor",
    "aten.index_put.default",
    "aten.index_put_.default",
    "aten._index_put_impl_.default",
    "aten._local_scalar_dense.default",
}


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One host-to-accelerator copy seen by the harness (`fake_accelerator(transfers=[...])`)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    non_blocking: bool


_TRANSFERS: list[Transfer] | None = None  # where fake_accelerator records host-to-device copies, when asked


def _target(kwargs: dict) -> torch.device | None:
    device = kwargs.get("device")
    return None if device is None else torch.device(device)


def _run(func, args: tuple, kwargs: dict):
    """Check one aten call for device mixes, run it on the CPU values, put the outputs where PyTorch would."""
    name = str(func)
    flat, _ = tree_flatten((args, kwargs))
    devices = set()
    for t in flat:
        if isinstance(t, AcceleratorTensor):
            devices.add("accelerator")
        elif isinstance(t, torch.Tensor):
            if t.device.type == FAKE.type:
                raise DeviceMixError(
                    f"{name} got a real meta tensor (shape {tuple(t.shape)}, no values): something was loaded or made "
                    "with device='meta' directly; load with map_location='cpu', then move it with .to(device)"
                )
            if t.dim() > 0:
                devices.add(t.device.type)
    target = _target(kwargs)
    if name not in _CROSS and len(devices) > 1:
        raise DeviceMixError(
            f"{name} mixes tensors on the CPU and on the accelerator (on a GPU: 'Expected all tensors to be on the "
            "same device'); move them to one device first"
        )
    accel = ("accelerator" in devices) if target is None else target.type == FAKE.type
    if name == "aten.copy_.default":
        accel = isinstance(args[0], AcceleratorTensor)
    gen = kwargs.get("generator")
    if gen is not None and _is_accelerator_generator(gen) != accel:
        where, other = ("the accelerator", "a CPU") if accel else ("the CPU", "an accelerator")
        raise DeviceMixError(
            f"{name}: a random draw on {where} from {other} generator (on a GPU: 'Expected a 'cuda' device type for "
            "generator'); make it with hpnb.utils.device_generator(device, seed)"
        )
    wrappers = {}

    def unwrap(t):
        if isinstance(t, AcceleratorTensor):
            wrappers[id(t.elem)] = t
            return t.elem
        return t

    cargs, ckwargs = tree_map(unwrap, (args, kwargs))
    if (
        _TRANSFERS is not None
        and name == "aten._to_copy.default"
        and accel
        and not isinstance(args[0], AcceleratorTensor)
    ):
        src = args[0]
        _TRANSFERS.append(Transfer(tuple(src.shape), src.dtype, src.nbytes, bool(kwargs.get("non_blocking", False))))
    if target is not None and target.type == FAKE.type:
        ckwargs = dict(ckwargs, device=torch.device("cpu"))
    out = func(*cargs, **ckwargs)
    if not accel:
        return out

    def wrap(t):
        if not isinstance(t, torch.Tensor) or isinstance(t, AcceleratorTensor):
            return t
        same = wrappers.get(id(t))  # in-place and out= results: the same wrapper
        return same if same is not None else AcceleratorTensor(t)

    return tree_map(wrap, out)


class _Mode(TorchDispatchMode):
    """Sees every aten call, factories included (`torch.zeros(..., device=FAKE)` has no tensor argument)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _from_data(make):
    """torch.tensor / torch.as_tensor with device=FAKE: built on the CPU, then copied through the dispatcher (the data
    constructors copy below it, which would give a real meta tensor without values)."""

    def build(data, *args, device=None, **kwargs):
        if device is not None and torch.device(device).type == FAKE.type:
            return make(data, *args, **kwargs).to(FAKE)
        return make(data, *args, device=device, **kwargs)

    return build


@contextlib.contextmanager
def fake_accelerator(transfers: list[Transfer] | None = None):
    """Inside: `FAKE` behaves as a GPU that computes on the CPU and refuses device mixes. Yields the device.

    `transfers`: a list that receives every host-to-accelerator copy (`Transfer`: shape, dtype, bytes, non_blocking),
    to check what a training step copies to the GPU."""
    global _TRANSFERS
    real = torch.tensor, torch.as_tensor
    torch.tensor, torch.as_tensor = _from_data(real[0]), _from_data(real[1])
    _TRANSFERS = transfers
    try:
        with _Mode():
            yield FAKE
    finally:
        torch.tensor, torch.as_tensor = real
        _TRANSFERS = None


@contextlib.contextmanager
def device_scope(name: str | None):
    """The device of a benchmark script's `--device NAME`: "fake" runs inside `fake_accelerator` (the GPU table's dry
    run, `benchmarks/gpu_table.sh --dry-run`); any other name (or None) is `hpnb.utils.pick_device(name)`."""
    if name == "fake":
        with fake_accelerator() as device:
            yield device
    else:
        yield pick_device(name)
