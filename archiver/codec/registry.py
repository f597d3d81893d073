"""Model registry: model id -> shipped safetensors file, its sha256 and its architecture.

Why a registry with hashes: a bitstream names the model id and the weights' sha256. Decoding it
years later must use exactly those weights, so files are never replaced under an existing id
(a better model gets a new id) and every load checks the hash. Weights are loaded with
safetensors only — never unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import UnknownModelError, WeightsIntegrityError
from .default import DEFAULT_MODEL
from .model import ConvNeXtCharm, Preset, build_model, load_state

if TYPE_CHECKING:
    from ..model_store import ModelStore

__all__ = ["DEFAULT_MODEL"]  # re-exported: callers import it from the registry

WEIGHTS_DIR = Path(__file__).with_name("weights")
REGISTRY_FILE = WEIGHTS_DIR / "registry.json"


@dataclass(frozen=True)
class ModelEntry:
    model_id: str
    file: Path
    sha256: str
    preset: Preset
    info: dict


def read_registry(path: Path | None = None) -> dict[str, ModelEntry]:
    path = path or REGISTRY_FILE  # looked up at call time, so tests and tools can point elsewhere
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    out = {}
    for mid, e in raw.get("models", {}).items():
        out[mid] = ModelEntry(mid, path.parent / e["file"], e["sha256"], Preset.from_dict(e["preset"]), e.get("info", {}))
    return out


def resolve(model_id: str) -> ModelEntry:
    reg = read_registry()
    if model_id not in reg:
        known = ", ".join(sorted(reg)) or "none"
        raise UnknownModelError(f"unknown model id {model_id!r} (this installation knows: {known})")
    return reg[model_id]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe_models(*, verify: bool = False, registry: Path | None = None) -> list[dict[str, Any]]:
    """Every model this installation can decode, for operators (``archiver models``).

    ``verify`` re-hashes each weights file against its recorded sha256 (15 MB each, well under a
    second): a damaged or half-copied package is then found by a check, not by the first decode
    that fails. ``intact`` is None when not verified, False when the file is missing or differs."""
    out = []
    for mid, e in sorted(read_registry(registry).items()):
        present = e.file.is_file()
        intact = None if not verify else (present and sha256_file(e.file) == e.sha256)
        out.append({"model_id": mid, "default": mid == DEFAULT_MODEL, "file": e.file.name,
                    "bytes": e.file.stat().st_size if present else None, "sha256": e.sha256,
                    "intact": intact, "scale_rule": e.preset.scale_rule,
                    "trained_steps": e.info.get("trained_steps"), "note": e.info.get("note", "")})
    return out


def load_model(model_id: str, device: torch.device | str = "cpu", store: ModelStore | None = None,
               expect_sha256: str | None = None) -> tuple[ConvNeXtCharm, ModelEntry]:
    """Build the architecture, verify the file's sha256, load weights + shipped CDF tables.

    The package's registry is asked first; an id it does not ship is looked up in ``store`` (the
    model store, ``archiver finetune``'s models), whose file is fetched once into the local cache
    and checked against its record and ``expect_sha256`` (a container's) before it is loaded."""
    if store is not None and model_id not in read_registry():
        return load_stored_model(model_id, store, device, expect_sha256)
    entry = resolve(model_id)
    if not entry.file.exists():
        raise WeightsIntegrityError(f"weights file for {model_id!r} is missing: {entry.file}")
    blob = entry.file.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != entry.sha256:
        raise WeightsIntegrityError(
            f"weights for {model_id!r} do not match the registry: sha256 {digest[:16]}..., expected {entry.sha256[:16]}..."
        )
    model = build_model(entry.preset)
    load_state(model, _state_from(blob))
    model.eval().requires_grad_(False)
    return model.to(device), entry


def load_stored_model(model_id: str, store: ModelStore, device: torch.device | str = "cpu",
                      expect_sha256: str | None = None) -> tuple[ConvNeXtCharm, ModelEntry]:
    """A model from the model store (see archiver/model_store.py), verified before it is loaded."""
    path, rec = store.local_copy(model_id, expect_sha256)
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != rec.sha256:  # the cache changed under us: refuse, never load
        raise WeightsIntegrityError(f"cached weights of {model_id!r} at {path} changed while loading",
                                    code="weights_tampered")
    preset, _ = file_preset(path)
    recorded = rec.record.get("preset")
    if recorded is not None and Preset.from_dict(recorded) != preset:
        raise WeightsIntegrityError(f"the model store's record of {model_id!r} names another architecture than "
                                    "its weights file", code="bad_model_record")
    model = build_model(preset)
    load_state(model, _state_from(blob))
    model.eval().requires_grad_(False)
    info = {"trained_steps": (rec.record.get("training") or {}).get("steps"), "note": rec.record.get("note", ""),
            "store": store.url, "base_model": rec.record.get("base_model")}
    return model.to(device), ModelEntry(model_id, path, rec.sha256, preset, info)


def file_preset(path: Path) -> tuple[Preset, dict[str, str]]:
    """The architecture a weights file was written with, and its other metadata (safetensors
    header: the preset travels with the weights)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "preset" not in meta:
        raise WeightsIntegrityError(f"{path} names no preset: not a weights file written by `archiver train`")
    return Preset.from_dict(json.loads(meta["preset"])), meta


def load_weights_file(path: Path, device: torch.device | str = "cpu",
                      model_id: str | None = None) -> tuple[ConvNeXtCharm, ModelEntry]:
    """Load a weights file written by ``archiver train`` that is not (yet) registered, under a
    provisional id (default ``file:NAME``): for evaluating candidates before one is shipped.
    Containers made this way name that id and the file's sha256, so they decode only with the
    same file; never use it for an archive."""
    blob = Path(path).read_bytes()
    preset, meta = file_preset(path)
    model = build_model(preset)
    load_state(model, _state_from(blob))
    model.eval().requires_grad_(False)
    entry = ModelEntry(model_id or f"file:{Path(path).name}", Path(path), hashlib.sha256(blob).hexdigest(), preset,
                       {"trained_steps": meta.get("steps")})
    return model.to(device), entry


def _state_from(blob: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a shipped file, fp16/bf16 transforms widened to fp32 for computing."""
    return {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v) for k, v in st_load(blob).items()}


#: the exact layers (exact.py): what the decoder derives probabilities from
EXACT_PREFIXES = ("h_s.", "mean_tf.", "scale_tf.", "lrp_tf.", "spatial_tf.", "anchor_tf.", "lattice_tf.")


def _is_exact_param(name: str) -> bool:
    return name.startswith(EXACT_PREFIXES)


def export_state(model: ConvNeXtCharm) -> dict[str, torch.Tensor]:
    """State for shipping: float transforms in fp16 (half the size, and they only shape pixels or
    the encoder's choices); exact-layer weights in fp32/fp64 so their grid values survive; CDF
    tables as built."""
    model.update_tables()
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        if t.is_floating_point():
            if _is_exact_param(name):
                t = t.double() if name.endswith(".bias") else t.float()
            elif name.startswith(("log_gain", "log_inv_gain", "entropy_bottleneck", "gaussian_conditional", "scale_table")):
                t = t.float()
            else:
                t = t.half()
        out[name] = t
    return out


def save_weights(model: ConvNeXtCharm, path: Path, meta: dict[str, str] | None = None) -> str:
    """Write safetensors and return the sha256 of the file."""
    data = st_save(export_state(model), metadata={"preset": json.dumps(model.preset.to_dict()), **(meta or {})})
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def register(model_id: str, path: Path, sha256: str, preset: Preset, info: dict, registry: Path | None = None) -> None:
    registry = registry or REGISTRY_FILE
    raw = json.loads(registry.read_text()) if registry.exists() else {"models": {}}
    if model_id in raw["models"]:
        known = raw["models"][model_id]
        if known["sha256"] != sha256 or Preset.from_dict(known["preset"]) != preset:
            raise ValueError(f"model id {model_id!r} is already registered with other weights or another "
                             "preset (scale rule); bitstreams depend on it — use a new id")
        return  # already registered exactly so: nothing changes
    raw["models"][model_id] = {"file": path.name, "sha256": sha256, "preset": preset.to_dict(), "info": info}
    registry.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


def register_weights(model_id: str, weights: Path, *, scale_rule: str, info: dict,
                     weights_dir: Path | None = None) -> ModelEntry:
    """Ship ``weights`` (a file written by ``archiver train``) under a new ``model_id``.

    The file is loaded strictly first (a wrong or truncated file fails here, not in a decoder),
    copied next to the registry and recorded with its sha256 and its architecture. The scale
    rule is chosen at registration because it is part of the bitstream format, not of training.
    An id is never reused for other weights; registering the same file again changes nothing.
    Weights already shipped under another id (e.g. the same network with a new scale rule) are
    not copied twice: the new entry points at the existing file.
    """
    weights_dir = weights_dir or WEIGHTS_DIR
    registry = weights_dir / "registry.json"
    blob = weights.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    shipped = read_registry(registry)
    known = shipped.get(model_id)
    if known is not None and known.sha256 != digest:
        raise ValueError(f"model id {model_id!r} is already registered with other weights; bitstreams depend on it "
                         "— use a new id")
    try:
        preset = replace(file_preset(weights)[0], scale_rule=scale_rule)
        load_state(build_model(preset), _state_from(blob))  # strict: every tensor present, every shape right
    except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, it is not shipped
        raise ValueError(f"{weights} is not a complete weights file written by `archiver train`: "
                         f"{type(e).__name__}: {e}") from e
    same = [e.file for e in shipped.values() if e.sha256 == digest and e.file.exists()]
    target = same[0] if same else weights_dir / f"{model_id}.safetensors"  # one file per distinct weights
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() != digest:
        raise ValueError(f"{target} exists with other contents; refusing to replace shipped weights")
    if not target.exists():
        target.write_bytes(blob)
    register(model_id, target, digest, preset, info, registry)
    return read_registry(registry)[model_id]
