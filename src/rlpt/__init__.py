"""rlpt: RLP (Reinforcement as a Pretraining Objective, arXiv 2510.01265) for Hugging Face causal LMs."""

__version__ = "0.1.0"

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
