"""mars-bench: benchmark harness for LLM serving under agentic load."""

__version__ = "0.1.0"
