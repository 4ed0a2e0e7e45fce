"""Knowledge bases: documents and loaders, chunking, the docstore, FAISS indexes, versions on disk, live reload,
filters, search and ingestion."""
