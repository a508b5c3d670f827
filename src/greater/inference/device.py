"""Where the model runs and in what precision: `--device`, `--dtype`, `--device-map`, resolved once.

    device  auto | cpu | cuda | cuda:N     auto: the current CUDA device when CUDA is available, else cpu
    dtype   auto | float32 | bfloat16 | float16
                                           auto: bfloat16 on a GPU that supports it, else float32
    device_map  None | "auto"              "auto": accelerate spreads the layers over every visible GPU

The weights are held in `dtype`; what precision matters for is computed in float32 whatever the
weights are (see README, "On a GPU"): the output-head logits at every scored position
(`logits.output_logits`), their log-softmax, the loss terms, the embedding-gradient leaf
(`gradient.TeacherForcing.suffix`) and the candidate-gradient product (`optimizer.candidate_gradient`).
"""

from __future__ import annotations

import re
import resource
from dataclasses import dataclass

import torch

from greater.errors import GreaterError, setting_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_rss_reset = False  # whether the last reset_peak_memory on CPU could reset the peak RSS


@dataclass(frozen=True)
class Placement:
    """A resolved device, dtype and device map, as run.json records them."""

    device: str  # "cpu" or "cuda:N" (with a device map: the device of the input embeddings)
    dtype: str  # a key of DTYPES
    device_map: str | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_json(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "device_map": self.device_map}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`spec` as a concrete device ("cuda" becomes "cuda:<current>"); GreaterError when it cannot be used."""
    text = str(spec if spec is not None else "auto").strip().lower()
    if not _DEVICE.match(text):
        raise GreaterError(f"device {spec!r} is not one of {DEVICE_CHOICES}")
    if text == "auto":
        return resolve_device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise GreaterError(
            f"device {text!r}: CUDA is not available ({build}); use {setting_name('device')} cpu or "
            f"{setting_name('device')} auto"
        )
    index = int(text.split(":")[1]) if ":" in text else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise GreaterError(f"device {text!r}: only {count} CUDA device(s) visible (cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The weights' dtype for `spec` on `device`; GreaterError for one the device cannot compute in."""
    if isinstance(spec, torch.dtype):
        name = next((k for k, v in DTYPES.items() if v == spec), None)
        if name is None:
            raise GreaterError(f"dtype {spec} is not one of auto, {', '.join(DTYPES)}")
        spec = name
    text = str(spec if spec is not None else "auto").strip().lower()
    if text == "auto":
        return torch.bfloat16 if device.type == "cuda" and _bf16_ok(device) else torch.float32
    if text not in DTYPES:
        raise GreaterError(f"dtype {spec!r} is not one of auto, {', '.join(DTYPES)}")
    if text == "bfloat16" and device.type == "cuda" and not _bf16_ok(device):
        name = torch.cuda.get_device_name(device)
        raise GreaterError(
            f"{name} ({device}) cannot compute in bfloat16 (it needs compute capability 8.0+); "
            f"use {setting_name('dtype')} float16 or float32"
        )
    return DTYPES[text]


def _bf16_ok(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_placement(
    device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto", device_map: str | None = None
) -> Placement:
    """Device, dtype and device map checked together (a device map needs CUDA and places the model itself)."""
    if device_map not in (None, "auto"):
        raise GreaterError(
            f"device map {device_map!r} is not supported; use {setting_name('device_map')} auto or leave it out"
        )
    if device_map == "auto":
        if str(device or "auto") not in ("auto", "cuda"):
            raise GreaterError(
                f"{setting_name('device_map')} auto places the model on every visible GPU; drop "
                f"{setting_name('device')} {device}"
            )
        if not torch.cuda.is_available():
            raise GreaterError(
                f"{setting_name('device_map')} auto spreads a model over GPUs, but CUDA is not available"
            )
    where = resolve_device(device if device_map is None else "cuda:0")
    return Placement(str(where), _name(resolve_dtype(dtype, where)), device_map)


def _name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory window (see `peak_memory`)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    global _rss_reset
    try:  # Linux: writing 5 resets the process's peak RSS (VmHWM) to its current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _rss_reset = True
    except OSError:
        _rss_reset = False  # then the peak is the process's since it started; `peak_memory` says so


def peak_memory(device: torch.device | str) -> dict:
    """The peak memory since `reset_peak_memory`, in MiB, and what it measures:

    "cuda_max_allocated": `torch.cuda.max_memory_allocated` (tensors on the GPU, not the allocator's reserve);
    "rss_peak": the process's peak resident memory (Linux VmHWM, reset per window);
    "rss_peak_process": the process's peak resident memory since it started (where the reset is not possible).
    """
    if torch.device(device).type == "cuda":
        return {"kind": "cuda_max_allocated", "mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    try:
        with open("/proc/self/status") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
        return {"kind": "rss_peak" if _rss_reset else "rss_peak_process", "mib": round(kib / 1024, 1)}
    except (OSError, StopIteration, ValueError):
        return {"kind": "rss_peak_process", "mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
