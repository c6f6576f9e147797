"""What a training run shows while it runs: tqdm's bar on a terminal; on anything else (a batch
job's log, `> log 2>&1`, a pipe) plain lines a reader can `tail -f` or grep: one per epoch at
most every `every` seconds (and always the first and the last), each meta-test's result as it
happens."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def _seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Progress of epochs [start, end) of a run whose budget is `total_steps` env steps."""

    def __init__(self, name: str, start: int, end: int, steps_done: int, total_steps: int, *, enabled: bool,
                 every: float = 30.0, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.terminal = enabled and self.stream.isatty()
        self.name, self.end, self.total = name, end, total_steps
        self.every = every
        self.steps = steps_done
        self.first_epoch = start
        self.started = time.monotonic()
        self.start_steps = steps_done
        self.last_line = float("-inf")
        self.bar = tqdm(total=total_steps, initial=steps_done, unit="step", unit_scale=True, dynamic_ncols=True,
                        desc=name, disable=not self.terminal)

    def epoch(self, epoch: int, steps: int, metrics: dict[str, float]) -> None:
        """Epoch `epoch` (0-based) has ended with `steps` env steps seen in all."""
        collected, self.steps = steps - self.steps, steps
        elapsed = max(metrics["time/sampling"] + metrics["time/update"], 1e-9)
        if self.terminal:
            self.bar.update(collected)
            self.bar.set_postfix(ret=f"{metrics['charts/episode_return']:.3g}", sps=f"{collected / elapsed:.0f}")
            return
        now = time.monotonic()
        last = epoch + 1 == self.end
        if not self.enabled or not (epoch == self.first_epoch or last or now - self.last_line >= self.every):
            return
        self.last_line = now
        wall = now - self.started
        rate = (steps - self.start_steps) / wall if wall > 0 else 0.0
        parts = [f"epoch {epoch + 1}/{self.end}", f"{steps:,}/{self.total:,} steps",
                 f"{collected / elapsed:,.0f} steps/s", f"return {metrics['charts/episode_return']:.2f}"]
        if "charts/success" in metrics:
            parts.append(f"success {metrics['charts/success']:.2f}")
        losses = [f"{k.removeprefix('losses/').replace('_', ' ')} {v:.4g}" for k, v in metrics.items()
                  if k in ("losses/policy_loss", "losses/value_loss", "losses/approx_kl")]
        parts += losses
        eta = (self.total - steps) / rate if rate > 0 else float("nan")
        parts.append(f"elapsed {_seconds(wall)}" + (f", left ~{_seconds(eta)}" if eta == eta and not last else ""))
        print(f"[{self.name}] " + " | ".join(parts), file=self.stream, flush=True)

    def meta_test(self, steps: int, metrics: dict[str, float]) -> None:
        """A meta-test's result (`meta_test/episode_k/return` and `/success`) at `steps` env steps."""
        if not self.enabled:
            return
        per_episode = lambda metric: [v for k, v in metrics.items()  # noqa: E731
                                      if k.startswith("meta_test/episode_") and k.endswith(metric)]
        line = (f"[{self.name}] meta-test at {steps:,} steps: return per episode "
                + ", ".join(f"{r:.2f}" for r in per_episode("/return")))
        if successes := per_episode("/success"):
            line += "; success per episode " + ", ".join(f"{s:.2f}" for s in successes)
        for key, value in metrics.items():  # the other protocols' summaries (`eval.also`)
            if not key.startswith("meta_test/episode_"):
                line += f"; {key.removeprefix('meta_test/')} {value:.2f}"
        if self.terminal:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()
