"""Several generations in one command: ``--seeds 1,2,5-8`` on ``threegen add`` and ``threegen generate``
runs the command once per seed, under a progress bar (tqdm, on stderr) when stderr is a terminal;
in a pipe or a log file nothing but the commands' own output is printed."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable

from tqdm import tqdm

from .keys import MAX_SEED, PromptError, check_seed

MAX_SEEDS = 1000


def parse_seeds(text: str) -> list[int]:
    """``"1,2,5-8"`` -> [1, 2, 5, 6, 7, 8]: each seed once, in the order given, at most MAX_SEEDS."""
    seeds: dict[int, None] = {}
    for part in text.replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise PromptError(f"--seeds {text[:80]!r}: use seeds and ranges like 1,2,5-8") from None
        if last < first or last - first >= MAX_SEEDS or len(seeds) + last - first + 1 > MAX_SEEDS:
            raise PromptError(f"--seeds {text[:80]!r}: at most {MAX_SEEDS} seeds, each range low-high, "
                              f"within 0..{MAX_SEED}")
        for seed in range(first, last + 1):
            seeds[check_seed(seed)] = None
    return list(seeds)


class _AboveTheBar:
    """A stream whose lines are written above the progress bar (``tqdm.write``), not through it."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if text.rstrip():  # print()'s separate newline: tqdm.write ends the line itself
            tqdm.write(text.rstrip("\n"), file=self.stream)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


def for_each_seed(seeds: list[int], what: str, run: Callable[[int], int]) -> int:
    """``run(seed)`` for each seed; the worst exit status. On a terminal a bar counts the generations."""
    shown = sys.stderr.isatty()
    worst = 0
    with tqdm(total=len(seeds), desc=what, unit="generation", file=sys.stderr, disable=not shown,
              dynamic_ncols=True) as bar, contextlib.ExitStack() as quiet:
        if shown:
            quiet.enter_context(contextlib.redirect_stdout(_AboveTheBar(sys.stdout)))
            quiet.enter_context(contextlib.redirect_stderr(_AboveTheBar(sys.stderr)))
        for seed in seeds:
            bar.set_postfix_str(f"seed {seed}")
            worst = max(worst, run(seed))
            bar.update(1)
    return worst


def with_seeds(command: Callable[[argparse.Namespace, object], int]) -> Callable[[argparse.Namespace, object], int]:
    """``command`` as it is, or once per seed of ``--seeds`` (each call sees that seed as ``args.seed``)."""

    def run(args: argparse.Namespace, settings) -> int:
        if not getattr(args, "seeds", None):
            return command(args, settings)
        return for_each_seed(parse_seeds(args.seeds), args.command,
                             lambda seed: command(argparse.Namespace(**{**vars(args), "seed": seed}), settings))

    return run
