"""tritonrag: the framework-free core shared by the Triton models of the RAG pipeline."""

__version__ = "0.1.0"
