"""Everything that talks Triton: the tensor contract, tensor helpers, instance parameters, the model adapters and
the remote embedder. Only this package imports triton_python_backend_utils."""
