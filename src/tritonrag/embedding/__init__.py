"""Sentence embedding: the sentence-transformers encoder and a model-free stand-in."""
