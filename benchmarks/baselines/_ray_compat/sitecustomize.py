"""Run at start-up by every process of the baseline's Ray instance (serve_baseline.py puts this folder first on
their PYTHONPATH, and imports it in its own process); nothing else loads it.

Ray 2.47 predates two packages of this venv, pinned for tritonrag's sake:

- opentelemetry-sdk 1.45 with opentelemetry-exporter-prometheus 0.48b0: the exporter imports a constant the SDK
  no longer defines. Ray's dashboard agent imports that exporter, dies with an ImportError, and the raylet
  fate-shares with it, so Ray cannot start. The constant is only an environment variable's name: define it.
- protobuf 7, whose field descriptors have no ``label`` (``is_repeated`` replaced it): Serve's controller reads
  ``field.label`` to decode every deployment config. Give the descriptor types a read-only ``label`` again.
"""


def _patch_opentelemetry() -> None:
    try:
        import opentelemetry.sdk.environment_variables as otel_env
    except ImportError:  # no opentelemetry: nothing to patch
        return
    name = "OTEL_PYTHON_EXPERIMENTAL_DISABLE_PROMETHEUS_UNIT_NORMALIZATION"
    if not hasattr(otel_env, name):
        setattr(otel_env, name, name)


def _patch_protobuf() -> None:
    try:
        from google.protobuf import descriptor
    except ImportError:
        return
    py_type = descriptor.FieldDescriptor
    types = [py_type]
    try:
        from google._upb import _message

        types.append(_message.FieldDescriptor)
    except (ImportError, AttributeError):  # the pure-Python or C++ implementation
        pass

    def label(field: object) -> int:
        return py_type.LABEL_REPEATED if field.is_repeated else py_type.LABEL_OPTIONAL

    for kind in types:
        if not hasattr(kind, "label") and hasattr(kind, "is_repeated"):
            kind.label = property(label)


_patch_opentelemetry()
_patch_protobuf()
