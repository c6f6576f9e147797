"""trmrl: Transformers are Meta-Reinforcement Learners (Melo, ICML 2022), on today's stack."""

__version__ = "0.1.0"
