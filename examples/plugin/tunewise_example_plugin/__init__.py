"""An example tunewise plugin: the ``recap_prompt`` rung, the ``parrot`` backend and the
``contains_answer`` metric, each one file plus one entry point in ``pyproject.toml``."""
