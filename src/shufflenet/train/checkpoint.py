"""Checkpoints: atomic save, safe (weights_only) load, RNG state capture, and safetensors weight export
with the model's input contract."""

from __future__ import annotations

import json
import pickle
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from shufflenet._system import atomic_write  # also imported from here by train.engine
from shufflenet._validation import state_dict_mismatch
from shufflenet.data.catalog import InputContract
from shufflenet.registry import create_model

EXPORT_FORMAT = "shufflenet-weights/1"


class CheckpointError(ValueError):
    """A checkpoint or exported weight file that cannot (or must not) be loaded."""


# --- RNG state -----------------------------------------------------------------------------------------


def capture_rng_state() -> dict:
    """The state of Python's ``random``, NumPy's global RNG, torch's CPU RNG and every CUDA RNG.

    Holds only tensors, ints, floats, strings and containers, so it loads with ``weights_only=True``.
    """
    version, internal, gauss_next = random.getstate()
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(bit_generator),
            # int64 because torch's uint32 tensors support few operations.
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Put back a state from :func:`capture_rng_state`.

    CUDA states are restored only where CUDA is available, for as many devices as both runs have.
    """
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    keys = np.asarray(npy["keys"].cpu().numpy(), dtype=np.uint32)
    np.random.set_state((npy["bit_generator"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    # .cpu(): a load with map_location="cuda" moves these too, but the setters want CPU byte tensors.
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` with ``torch.save`` atomically: ``path`` holds either the old file or the new one."""
    atomic_write(Path(path), lambda f: torch.save(state, f))


# --- Safe load -----------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only.

    Raises :class:`CheckpointError` for pickled Python objects (nothing in them is run) or a corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; check the path (or the run directory)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(e))
        detail = found.group(0) if found else "rejected by the weights_only unpickler"
        if detail.startswith("Unsupported global"):
            reason = f"it contains pickled Python objects, not just tensors ({detail})"
        else:
            reason = f"it is a pickle of Python objects or a corrupt file, not a torch checkpoint ({detail})"
        raise CheckpointError(
            f"refusing to load {path}: {reason}; only weights_only checkpoints are accepted"
        ) from None
    except OSError:
        raise
    except Exception as e:
        # torch raises RuntimeError, EOFError, KeyError, ... for damaged files; report them all the same way.
        first_line = str(e).split("\n", 1)[0][:200]
        raise CheckpointError(
            f"cannot read {path}: the file is truncated or corrupt ({type(e).__name__}: {first_line}); "
            "use an earlier checkpoint"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a dict; save checkpoints with save_checkpoint"
        )
    return state


# --- Weight export -------------------------------------------------------------------------------------


def export_weights(
    model: torch.nn.Module,
    path: str | Path,
    *,
    model_name: str,
    model_args: dict,
    dataset: str | None = None,
    image_size: int | None = None,
    class_names: Sequence[str] = (),
    normalization: Mapping[str, Sequence[float]] | None = None,
) -> tuple[Path, Path]:
    """Save ``model``'s weights as safetensors at ``path`` plus a JSON sidecar (same stem, ``.json``).

    ``model_args`` are the keyword arguments for ``create_model(model_name, ...)`` that rebuild it. With
    ``dataset`` (the one it was trained on, at ``image_size``, default the dataset's own) the sidecar also
    records its :class:`InputContract` under ``"input"``, with ``normalization`` (``mean`` and ``std``)
    where it was trained with other than the dataset's (an image folder's own, measured). Returns
    ``(weights_path, sidecar_path)``.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if sidecar == path:
        raise ValueError(f"{path} ends in .json, which the sidecar needs; name the weights *.safetensors")
    meta = {"model": model_name, "args": model_args, "format": EXPORT_FORMAT}
    if dataset is not None:
        contract = InputContract.for_dataset(dataset, image_size, model_args.get("in_chans"), class_names)
        if normalization is not None:
            mean, std = (tuple(float(v) for v in normalization[key]) for key in ("mean", "std"))
            contract = replace(contract, mean=mean, std=std)
        meta["input"] = contract.to_dict()
    try:
        text = json.dumps(meta, indent=2) + "\n"
    except TypeError as e:
        raise ValueError(
            f"model_args must be JSON-serializable ({e}); pass plain ints, floats, strs, lists"
        ) from None
    # safetensors wants contiguous CPU tensors; channels_last or CUDA models would otherwise fail.
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = safetensors.torch.save(tensors)
    atomic_write(path, lambda f: f.write(data))
    atomic_write(sidecar, lambda f: f.write(text.encode("utf-8")))
    return path, sidecar


def _read_sidecar(sidecar: Path, weights: Path) -> dict:
    """The parsed ``model.json`` beside ``weights``, checked for its format."""
    if not sidecar.is_file():
        raise FileNotFoundError(
            f"no sidecar {sidecar} next to {weights}; it names the model, so re-export with export_weights"
        )
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{sidecar} is not valid JSON ({e}); re-export with export_weights") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{sidecar} has format {found!r}, expected {EXPORT_FORMAT!r}; re-export it")
    return meta


def load_input_contract(path: str | Path) -> InputContract | None:
    """The input contract of trained weights: ``path`` is a ``model.safetensors`` (or its ``model.json``),
    a ``checkpoint.pt`` or a run directory (its ``model.json``, else its ``checkpoint.pt``).

    None where nothing records it: a sidecar written before contracts were, or a checkpoint without its
    training config. A checkpoint records no class names."""
    path = Path(path)
    if path.is_dir():
        sidecar = path / "model.json"
        has_contract = sidecar.is_file() and "input" in _read_sidecar(sidecar, path / "model.safetensors")
        path = sidecar if has_contract else path / "checkpoint.pt"
    if path.suffix in (".safetensors", ".json"):
        sidecar = path.with_suffix(".json")
        meta = _read_sidecar(sidecar, path.with_suffix(".safetensors"))
        return InputContract.from_dict(meta["input"], str(sidecar)) if "input" in meta else None
    state = load_checkpoint(path)
    config = state.get("config") or {}
    if not isinstance(config, dict) or "dataset" not in config:
        return None
    channels = (state.get("model_args_resolved") or {}).get("in_chans")
    contract = InputContract.for_dataset(config["dataset"], config.get("image_size"), channels)
    normalization = state.get("normalization") or {}
    if "mean" in normalization and "std" in normalization:
        contract = replace(contract, mean=tuple(normalization["mean"]), std=tuple(normalization["std"]))
    return replace(contract, source=str(path))


def load_exported(path: str | Path) -> torch.nn.Module:
    """Rebuild a model saved by :func:`export_weights`, load its weights strictly, return it in eval mode."""
    path = Path(path)
    meta = _read_sidecar(path.with_suffix(".json"), path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}; check the path")
    try:
        state_dict = safetensors.torch.load_file(path, device="cpu")
    except Exception as e:
        raise CheckpointError(
            f"cannot read {path}: not a valid safetensors file ({e}); re-export it"
        ) from None
    model = create_model(meta["model"], **meta["args"])
    mismatch = state_dict_mismatch(model.state_dict(), state_dict)
    if mismatch:
        raise CheckpointError(
            f"{path} does not fit {meta['model']} built with {meta['args']}: {mismatch}; "
            "check the sidecar's model and args"
        )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
