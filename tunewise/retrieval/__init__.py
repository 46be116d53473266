"""Retrieval: chunking, BM25, dense embeddings, hybrid fusion, and a persisted index."""
