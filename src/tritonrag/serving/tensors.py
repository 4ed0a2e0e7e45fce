"""Tensor helpers shared by the Triton Python-backend adapters (tritonrag.serving.models).

With the adapters, the only place that touches ``triton_python_backend_utils``; the core is framework-free and
unit tested without Triton.
"""

from __future__ import annotations

import locale
from collections.abc import Sequence
from typing import Any

import numpy as np

from tritonrag.errors import InvalidInput, Unavailable, Unsupported
from tritonrag.validation import parse_json_object

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # only importable inside the Python backend stub
    pb_utils = None


def ensure_utf8_locale() -> None:
    """The stub's embedded Python starts in the C locale, so open() would read files as ASCII (torch's
    inductor templates and others then fail); switch LC_CTYPE to a UTF-8 locale."""
    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        return
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return
        except locale.Error:
            continue


ensure_utf8_locale()


def _decode(value: Any, name: str, row: int) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, (bytes, np.bytes_)):
        raise InvalidInput(f"input '{name}' row {row}: expected a string, got {type(value).__name__}")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input '{name}' row {row} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_strings(request: Any, name: str, required: bool = True) -> list[str] | None:
    """All elements of a BYTES input, decoded as UTF-8, flattened in row order."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise InvalidInput(f"missing required input '{name}'")
        return None
    array = tensor.as_numpy()
    return [_decode(v, name, i) for i, v in enumerate(array.reshape(-1))]


def read_string(request: Any, name: str, required: bool = True) -> str | None:
    """A single-element BYTES input."""
    values = read_strings(request, name, required)
    if values is None:
        return None
    if len(values) != 1:
        raise InvalidInput(f"input '{name}' must hold exactly one string, got {len(values)}")
    return values[0]


def read_scalar(request: Any, name: str) -> Any | None:
    """A single-element numeric or boolean input as a Python value, or None when absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy().reshape(-1)
    if array.size != 1:
        raise InvalidInput(f"input '{name}' must hold exactly one value, got {array.size}")
    return array[0].item()


def request_parameters(request: Any) -> dict[str, Any]:
    """The request's parameters (HTTP generate `parameters` / gRPC parameters) as a dict."""
    return parse_json_object(request.parameters(), "request parameters")


def string_tensor(name: str, values: Sequence[str], shape: tuple[int, ...] | None = None) -> Any:
    array = np.array([v.encode("utf-8") for v in values], dtype=np.object_)
    if shape is not None:
        array = array.reshape(shape)
    return pb_utils.Tensor(name, array)


def error_for(exc: BaseException) -> Any:
    """A TritonError: UNSUPPORTED or INVALID_ARG for bad input, INTERNAL (with the exception type) otherwise."""
    if isinstance(exc, Unsupported):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.UNSUPPORTED)
    if isinstance(exc, InvalidInput):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
    if isinstance(exc, Unavailable):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.UNAVAILABLE)
    return pb_utils.TritonError(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)


def error_response(exc: BaseException) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=error_for(exc))


def split_rows(array: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Split a stacked batch back into per-request pieces of ``counts`` rows each."""
    return np.split(array, np.cumsum(counts)[:-1]) if counts else []
