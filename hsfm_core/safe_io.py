"""The reading layer: every file HSFM Studio reads from disk goes through here (docs/ARCHITECTURE.md §Reading).

Each reader turns every way a file can be wrong (missing, unreadable, truncated, not UTF-8, not
the expected JSON shape, a missing tensor, a pickle, an image outside its root, a decompression
bomb) into one `InputError` that names the file and what was expected. Nothing is unpickled:
JSON, safetensors, `np.load(allow_pickle=False)`, parquet and `torch.load(weights_only=True)`.

What callers check on top (a manifest's keys, a store's rows, a run's tensors' shapes) lives with
the caller; this module only guarantees "a value of the expected kind, or InputError".
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from hsfm_core.errors import InputError

PICKLE_REFUSED = ("pickled checkpoints are refused: loading a pickle can run arbitrary code, so HSFM Studio "
                  "reads only weights (tensors, numbers, strings, lists and dicts of them); save "
                  "`model.state_dict()` (or the tensors) with torch.save, or as .safetensors")


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: expected a {what}, found a folder") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({_why(exc)})") from None


def read_text(path: str | os.PathLike, what: str = "text file") -> str:
    """The file as UTF-8 text; anything else (binary junk, Latin-1) is an InputError."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the {what} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", expect: type | tuple[type, ...] | None = dict,
              allow_nan: bool = True) -> Any:
    """A JSON document whose top level is `expect` (dict by default; None: anything). `allow_nan=False`:
    standard JSON only — NaN, Infinity and numbers beyond float range (1e400) are refused, so what is read
    can be printed again as JSON that every parser accepts."""
    text = read_text(path, what)
    hooks = {} if allow_nan else {"parse_constant": _refuse_constant, "parse_float": _finite_float}
    try:
        value = json.loads(text, **hooks)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: the {what} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except _NotStandard as exc:
        raise InputError(f"{path}: the {what} holds {exc}, which is not a JSON number (NaN and Infinity are not "
                         f"standard JSON)") from None
    except RecursionError:
        raise InputError(f"{path}: the {what} is nested too deeply to read") from None
    if expect is not None and not isinstance(value, expect):
        names = " or ".join(_json_kind(t) for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise InputError(f"{path}: the {what} must hold a JSON {names}, found a {_json_kind(type(value))}")
    return value


class _NotStandard(Exception):
    """A JSON constant or number that standard JSON does not have (not a ValueError: json must not wrap it)."""


def _refuse_constant(name: str):
    raise _NotStandard(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotStandard(f"{text[:40]} (beyond float range)")
    return value


def _json_kind(t: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(t, t.__name__)


def read_safetensors(path: str | os.PathLike, what: str = "tensor file",
                     required: Iterable[str] = ()) -> dict:
    """A safetensors file as {name: torch tensor}, holding at least `required` (InputError otherwise)."""
    from safetensors.torch import load

    path = Path(path)
    data = read_bytes(path, what)
    try:
        tensors = load(data)
    except Exception as exc:  # SafetensorError (truncated, bad header), or anything the parser raises
        raise InputError(f"{path} cannot be read: the {what} is not a complete safetensors file ({_why(exc)})") from None
    missing = [k for k in required if k not in tensors]
    if missing:
        raise InputError(f"{path}: the {what} lacks {', '.join(repr(k) for k in missing)} "
                         f"(it holds {', '.join(sorted(tensors)) or 'nothing'})")
    return tensors


def read_npz(path: str | os.PathLike, what: str = ".npz archive") -> dict:
    """Every array of an .npz (eagerly, so a truncated member fails here, not later)."""
    import zipfile
    import zlib

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise InputError(f"{path}: holds object arrays, which would need unpickling; "
                             f"pickled data is refused (it can run arbitrary code)") from None
        raise InputError(f"{path}: cannot read the {what} ({_why(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise InputError(f"{path}: the {what} is truncated or not an .npz ({_why(exc)})") from None


def read_npy(path: str | os.PathLike, what: str = ".npy array", mmap: bool = False):
    """One .npy array, memory-mapped read-only when `mmap`."""
    import numpy as np

    path = Path(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the {what} ({_why(exc)})") from None


def read_parquet(path: str | os.PathLike, what: str = "parquet table"):
    """A parquet table → (pandas DataFrame, the file's key-value metadata as {str: str})."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
        frame = table.to_pandas()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read the {what} ({_why(exc)})") from None
    metadata = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                for k, v in (table.schema.metadata or {}).items()}
    return frame, metadata


def read_torch_weights(path: str | os.PathLike, what: str = "weights file") -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only; a pickle is refused plainly."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise InputError(f"{path}: {PICKLE_REFUSED}") from None
        raise InputError(f"{path}: the {what} is not a torch weights file or is truncated ({_why(exc)})") from None
    except Exception as exc:  # truncated zip, not a torch file at all, …: torch raises many kinds
        raise InputError(f"{path}: the {what} is not a torch weights file or is truncated ({_why(exc)})") from None


# -- images ------------------------------------------------------------------------------------------

def resolve_image(root: str | os.PathLike, relative: str) -> Path:
    """The real path of an image listed under `root`, following symlinks; InputError if it is absolute,
    climbs out with `..`, or resolves (through a symlink anywhere on the way) outside `root`."""
    root_real = Path(os.path.realpath(root))
    rel = str(relative)
    if "\x00" in rel:
        raise InputError(f"image path {relative!r} holds a NUL byte; no file can have that name")
    if not rel or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        raise InputError(f"image path {relative!r} must be relative to the image root {root}")
    real = Path(os.path.realpath(os.path.join(root_real, rel)))
    if real != root_real and root_real not in real.parents:
        raise InputError(f"image path {relative!r} resolves to {real}, outside the image root {root_real}; "
                         f"images must stay inside it (symlinks included)")
    return real


def open_image(path: str | os.PathLike):
    """A decoded RGB PIL image, or InputError for anything unreadable — decompression bombs included
    (PIL's pixel limit; above it is refused rather than decoded)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise InputError(f"{path}: cannot decode the image ({_why(exc)})") from None


def check_image_header(path: str | os.PathLike) -> None:
    """Parse only an image's header (no decoding); InputError when it is not an image or a bomb."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.size  # noqa: B018  (the header is parsed by open)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(f"{path}: not a readable image ({_why(exc)})") from None


def check_fields(mapping: Any, where: str, required: Mapping[str, Any] = {}, optional: Mapping[str, Any] = {}) -> dict:
    """`mapping` is a JSON object whose `required` keys are present and whose `optional` keys, when present and
    not null, hold values of their type; a type is a Python type, a tuple of types, or a callable → bool
    (e.g. `positive_int`). Bool is never an int or a number. → the mapping; InputError naming the key otherwise."""
    if not isinstance(mapping, dict):
        raise InputError(f"{where}: expected a JSON object, found a {_json_kind(type(mapping))}")
    for key, kind in [*required.items(), *optional.items()]:
        if key not in mapping:
            if key in required:
                raise InputError(f"{where}: missing key {key!r}")
            continue
        value = mapping[key]
        if value is None and key in optional:
            continue
        if not _is(value, kind):
            expected = getattr(kind, "expected", None) or " or ".join(
                _json_kind(t) for t in (kind if isinstance(kind, tuple) else (kind,)))
            raise InputError(f"{where}: key {key!r} must be {_article(expected)}, found {value!r:.60}")
    return mapping


def _is(value: Any, kind) -> bool:
    if callable(kind) and not isinstance(kind, type):
        return bool(kind(value))
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def _article(expected: str) -> str:
    return expected if expected.split(" ")[0] in ("a", "an", "one", "null") else f"a {expected}"


def described(expected: str):
    """Name what a type test (for `check_fields`) accepts: `@described("an integer ≥ 1")`."""
    def decorate(test):
        test.expected = expected
        return test
    return decorate


@described("an integer ≥ 1")
def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@described("a finite number")
def finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


@described("a list of strings")
def string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def require_keys(mapping: Mapping, types: Mapping[str, type | tuple[type, ...]], where: str) -> None:
    """Each key present with a value of its type (bool is not accepted as an int)."""
    for key, kind in types.items():
        if key not in mapping:
            raise InputError(f"{where}: missing key {key!r}")
        value = mapping[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(_json_kind(t) for t in kinds)
            raise InputError(f"{where}: key {key!r} must be a {names}, found {type(value).__name__} {value!r:.60}")
