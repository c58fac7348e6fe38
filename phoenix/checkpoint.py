"""One-file checkpoints: params + hash tables + config + model version, with a format version.

Parameters are stored under the reference's keys, `param:{haiku module path}:{name}`, so a
reference-layout parameter file (e.g. the golden file) loads with `load_params`.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from phoenix.config import RankerConfig
from phoenix.embeddings import HashTables, table_shapes
from phoenix.errors import PhoenixError
from phoenix.params import Params, init_params

FORMAT = "phoenix-checkpoint"
FORMAT_VERSION = 1
_PARAM_PREFIX = "param:"
_TABLE_PREFIX = "table:"


class CheckpointError(PhoenixError, ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the offending entry."""


_ZIP_MAGIC = b"PK\x03\x04"  # every .npz is a zip archive; its first entry starts here


@contextlib.contextmanager
def _open_npz(path: str | os.PathLike) -> Iterator[Any]:
    """`np.load` of an .npz with pickles refused, and every way a file can be damaged turned
    into a `CheckpointError` naming the path and the reason. (numpy's own messages for a
    non-zip file suggest loading it with pickles allowed, which must never be done with a
    file of unknown origin.)"""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        raise CheckpointError(f"{path}: not an .npz checkpoint (it does not start like a zip "
                              "archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            yield data
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    if isinstance(error, ValueError) and "pickle" in str(error):
        return "it holds an object array, and a checkpoint never loads one"
    return f"damaged or truncated ({type(error).__name__}: {error})"


def param_shapes(config: RankerConfig) -> dict[str, tuple[int, ...]]:
    """`{"param:{path}:{name}": shape}` for every parameter the config's model has."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    return {f"{_PARAM_PREFIX}{path}:{name}": tuple(leaf.shape)
            for path, group in shapes.items() for name, leaf in group.items()}


def _flatten_params(params: Params) -> dict[str, np.ndarray]:
    return {f"{_PARAM_PREFIX}{path}:{name}": np.asarray(value, np.float32)
            for path, group in params.items() for name, value in group.items()}


def _check_shapes(found: dict[str, tuple], expected: dict[str, tuple], where: str) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        raise CheckpointError(f"{where}: missing entry {missing[0]!r} (and {len(missing) - 1} "
                              "more); was it written for another model configuration?")
    if extra:
        raise CheckpointError(f"{where}: unexpected entry {extra[0]!r} (and {len(extra) - 1} "
                              "more) that the configured model does not have")
    for key, shape in expected.items():
        if found[key] != shape:
            raise CheckpointError(f"{where}: entry {key!r} has shape {found[key]}, the "
                                  f"configured model needs {shape}; check the config")


def load_params(path: str | os.PathLike, config: RankerConfig) -> Params:
    """Reads the `param:` entries of any npz file (a checkpoint or a reference-layout file)."""
    with _open_npz(path) as data:
        arrays = {k: data[k] for k in data.files if k.startswith(_PARAM_PREFIX)}
    _check_shapes({k: v.shape for k, v in arrays.items()}, param_shapes(config), str(path))
    params: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        module, name = key[len(_PARAM_PREFIX):].rsplit(":", 1)
        params.setdefault(module, {})[name] = value.astype(np.float32)
    return params


def save(path: str | os.PathLike, config: RankerConfig, params: Params, tables: HashTables,
         model_version: str) -> None:
    """Writes atomically (temp file + rename) so a reader never sees half a checkpoint."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "config": config.to_dict(), "model_version": model_version}
    arrays: dict[str, Any] = _flatten_params(params)
    for kind, table in tables._asdict().items():
        arrays[f"{_TABLE_PREFIX}{kind}"] = np.asarray(table, np.float32)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def _read_meta(data, path) -> dict:
    if "meta" not in data.files:
        raise CheckpointError(f"{path}: no 'meta' entry; not a {FORMAT} file (a bare "
                              "reference parameter set loads with load_params)")
    try:
        meta = json.loads(str(data["meta"]))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: its 'meta' entry is not JSON ({error})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'meta' entry is not a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r} is not "
                              f"supported (this code reads version {FORMAT_VERSION})")
    return meta


def _config_mismatch(found: dict, expected: dict, prefix: str = "") -> str | None:
    for key in sorted(set(found) | set(expected)):
        a, b = found.get(key), expected.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _config_mismatch(a, b, f"{prefix}{key}.")
            if inner:
                return inner
        elif a != b:
            return f"config.{prefix}{key} is {a!r} in the file, {b!r} expected"
    return None


def load(path: str | os.PathLike, expected_config: RankerConfig | None = None
         ) -> tuple[RankerConfig, Params, HashTables, str]:
    """-> (config, params, tables, model_version). With `expected_config`, refuses a file
    written for another configuration, naming the first differing entry."""
    with _open_npz(path) as data:
        meta = _read_meta(data, path)
        try:
            config = RankerConfig.from_dict(meta["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: its config cannot be read: {e}") from e
        if expected_config is not None:
            mismatch = _config_mismatch(config.to_dict(), expected_config.to_dict())
            if mismatch:
                raise CheckpointError(f"{path}: {mismatch}")
        shapes = table_shapes(config)
        tables = {}
        for kind, shape in shapes._asdict().items():
            key = f"{_TABLE_PREFIX}{kind}"
            if key not in data.files:
                raise CheckpointError(f"{path}: missing entry {key!r}")
            if data[key].shape != tuple(shape):
                raise CheckpointError(f"{path}: entry {key!r} has shape {data[key].shape}, "
                                      f"the file's config needs {tuple(shape)}")
            tables[kind] = data[key]
    params = load_params(path, config)
    return config, params, HashTables(**tables), str(meta.get("model_version", "unknown"))
