"""tunewise: measure whether prompting, retrieval or fine-tuning is what an LLM task needs."""

__version__ = "0.1.0"
