"""The Triton Python-backend models; each rendered model.py imports its TritonPythonModel from here."""
