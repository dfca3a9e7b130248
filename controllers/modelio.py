"""Model files that cannot run code when loaded.

Seed 001 shipped its models as pickles (``isolation_forest.pkl``). Loading a pickle — or a joblib
file, which is a pickle — runs whatever code its author put in it, so a model file passed around
between users is a program. tokenpace writes models in skops' format instead: a zip holding a JSON
schema and numpy arrays, rebuilt by skops without unpickling. :func:`load_model` accepts nothing else:

1. the file must be a zip whose ``schema.json`` carries skops' protocol keys; a pickle, a joblib dump
   or anything else is refused with :class:`UnsafeModelError` before a byte of it is interpreted;
2. the types the file would instantiate that skops does not trust by default
   (``skops.io.get_untrusted_types``) must all be in :data:`ALLOWED_TYPES` — the few scikit-learn
   internals our pipelines need — or the file is refused, naming the types;
3. the loaded object must be a tokenpace model record (the estimator plus metadata), its kind the one
   asked for and its feature version :data:`controllers.features.FEATURE_VERSION`; else
   :class:`ModelFileError` (retrain).

The metadata (kind, feature names, feature version, training source, library versions) is stored in
the same skops file, as a JSON string beside the estimator, so it cannot be separated from it.
skops is imported lazily (it is in the ``ml`` extra).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controllers.features import FEATURE_VERSION

__all__ = [
    "ALLOWED_TYPES",
    "FORMAT",
    "LoadedModel",
    "ModelFileError",
    "UnsafeModelError",
    "load_model",
    "save_model",
]

FORMAT = "tokenpace-model-1"
RETRAIN_HINT = "retrain with `python -m analysis train TELEMETRY.csv`"

#: types skops does not trust by default that tokenpace's pipelines are made of (fitted trees).
ALLOWED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.tree._tree.Tree",  # IsolationForest's ExtraTreeRegressor.tree_
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",  # HistGradientBoosting's trees
    }
)


class ModelFileError(ValueError):
    """A model file that cannot be used (missing, wrong kind, other feature version). One line."""


class UnsafeModelError(ModelFileError):
    """A model file that could run code or build objects we do not allow: refused, not loaded."""


@dataclass(frozen=True)
class LoadedModel:
    """A model file's estimator and its metadata."""

    model: Any
    meta: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _skops() -> Any:
    try:
        import skops.io as sio
    except ImportError:  # pragma: no cover - depends on the environment
        raise ModelFileError("skops is not installed: pip install 'tokenpace[ml]' (or pip install skops)") from None
    return sio


def save_model(obj: Any, path: Path | str, meta: Mapping[str, Any] | None = None, *, compress: bool = True) -> Path:
    """Write ``obj`` (a fitted estimator) with ``meta`` to ``path`` in skops format.

    ``meta`` should name at least ``kind`` and ``feature_names``; ``feature_version`` defaults to the
    current one, library versions are added. Returns the path.
    """
    import sklearn

    sio = _skops()
    import skops

    path = Path(path)
    info: dict[str, Any] = {"feature_version": FEATURE_VERSION}
    info.update(meta or {})
    info.setdefault("sklearn_version", sklearn.__version__)
    info.setdefault("skops_version", skops.__version__)
    record = {"format": FORMAT, "meta_json": json.dumps(info, sort_keys=True), "model": obj}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if compress:
        sio.dump(record, tmp, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    else:
        sio.dump(record, tmp)
    tmp.replace(path)
    return path


def _looks_like(head: bytes) -> str:
    if head[:1] == b"\x80":
        return "a pickle"
    if head[:2] in (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda"):
        return "a zlib-compressed (joblib?) pickle"
    if head[:3] == b"\x1f\x8b\x08":
        return "a gzip (joblib?) file"
    if head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "a compressed (joblib?) file"
    return "not a zip archive"


def check_skops_file(path: Path | str) -> list[str]:
    """Refuse anything that is not a skops file whose untrusted types are all allowed.

    Returns the untrusted types the file holds (all in :data:`ALLOWED_TYPES`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found ({RETRAIN_HINT})")
    with path.open("rb") as f:
        head = f.read(8)
    if not zipfile.is_zipfile(path):
        raise UnsafeModelError(
            f"{path}: not a skops model file ({_looks_like(head)}); tokenpace loads only skops files because "
            f"pickle/joblib files can run arbitrary code when loaded; {RETRAIN_HINT}"
        )
    try:
        with zipfile.ZipFile(path) as z:
            schema = json.loads(z.read("schema.json"))
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise UnsafeModelError(f"{path}: a zip file but not a skops model file ({exc}); {RETRAIN_HINT}") from None
    if not isinstance(schema, dict) or not {"protocol", "_skops_version", "__class__"} <= schema.keys():
        raise UnsafeModelError(
            f"{path}: schema.json lacks skops' protocol keys; not a skops model file; {RETRAIN_HINT}"
        )
    sio = _skops()
    try:
        untrusted = sorted(sio.get_untrusted_types(file=path))
    except Exception as exc:  # a malformed schema
        raise UnsafeModelError(f"{path}: cannot read the skops schema: {type(exc).__name__}: {exc}") from None
    refused = [t for t in untrusted if t not in ALLOWED_TYPES]
    if refused:
        raise UnsafeModelError(
            f"{path}: refusing to load types outside tokenpace's allowlist: {', '.join(refused)} "
            f"(allowed beyond skops' defaults: {', '.join(sorted(ALLOWED_TYPES))}); {RETRAIN_HINT}"
        )
    return untrusted


def load_model(path: Path | str, *, kind: str | None = None) -> LoadedModel:
    """Load a model written by :func:`save_model`, refusing anything unsafe or stale (see the module doc)."""
    path = Path(path)
    untrusted = check_skops_file(path)
    sio = _skops()
    try:
        record = sio.load(path, trusted=untrusted)
    except Exception as exc:
        raise ModelFileError(f"{path}: cannot load: {type(exc).__name__}: {exc}; {RETRAIN_HINT}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "model" not in record:
        raise ModelFileError(f"{path}: a skops file but not a tokenpace model (no {FORMAT} record); {RETRAIN_HINT}")
    try:
        meta = json.loads(record.get("meta_json") or "{}")
    except (TypeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: unreadable metadata; {RETRAIN_HINT}") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: metadata is not a JSON object; {RETRAIN_HINT}")
    version = meta.get("feature_version")
    if version != FEATURE_VERSION:
        raise ModelFileError(
            f"{path}: trained on features {version!r}, this tokenpace computes {FEATURE_VERSION!r}; {RETRAIN_HINT}"
        )
    if kind is not None and meta.get("kind") != kind:
        raise ModelFileError(f"{path}: holds a {meta.get('kind')!r} model, expected {kind!r}")
    return LoadedModel(model=record["model"], meta=meta, path=path)
