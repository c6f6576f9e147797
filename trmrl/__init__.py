"""trmrl: Transformers are Meta-Reinforcement Learners (Melo, ICML 2022), on today's stack.

`from trmrl import Agent` loads a trained agent to act with from Python (`trmrl.agent`).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Agent"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that `import trmrl.<module>` stays light
    if name == "Agent":
        from trmrl.agent import Agent

        return Agent
    raise AttributeError(f"module 'trmrl' has no attribute {name!r}")
