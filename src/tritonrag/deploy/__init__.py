"""Deployment: the spec, GPU placement, the plan, rendering the model repository, the Triton runtime and server."""
