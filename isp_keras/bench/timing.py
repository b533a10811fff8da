"""Interleaved timing for the benchmarks: ratios of variants that hold run to run on a shared, drifting machine.

The variants are timed in rounds (A B, B A, A B, ... the order rotates each round, so no variant always runs first
or after the same neighbour); each round times a short block of calls of every variant, one after the other. A
ratio figure is the **median of the per-round ratios** A_r / B_r: a slow drift (thermal, another process starting)
hits both members of a pair alike and cancels in their ratio, and a burst that hits one round is one outlier among
the rounds, which the median ignores. The spread of the per-round ratios (min, quartiles, max) is reported next to
each ratio. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Timings:
    """Per-round seconds per call of each variant (`times[name][r]`: round r's block time / calls in the block)."""

    times: dict[str, list[float]]

    @property
    def rounds(self) -> int:
        return len(next(iter(self.times.values()), []))

    def ms(self, name: str) -> float:
        """Median over rounds of the per-call time of `name`, in milliseconds."""
        return 1000.0 * statistics.median(self.times[name])

    def ratios(self, num: str, den: str) -> list[float]:
        """The per-round ratios num_r / den_r (each pair timed back to back in the same round)."""
        return [a / b for a, b in zip(self.times[num], self.times[den], strict=True)]

    def ratio(self, num: str, den: str) -> float:
        """Median of the per-round ratios num_r / den_r."""
        return statistics.median(self.ratios(num, den))

    def ratio_figures(self, figure: str, num: str, den: str, offset: float = 0.0) -> dict[str, float]:
        """{figure: median ratio, figure_min, figure_q1, figure_q3, figure_max} of num/den + offset (e.g. offset=-1
        for an overhead (raw - rgb) / rgb). The median of the ratios is always within [min, max] of them, and so is
        the ratio of the two variants' median times."""
        values = sorted(r + offset for r in self.ratios(num, den))
        q1, q3 = (
            statistics.quantiles(values, n=4, method="inclusive")[::2] if len(values) > 1 else (values[0], values[0])
        )
        return {
            figure: statistics.median(values),
            f"{figure}_min": values[0],
            f"{figure}_q1": q1,
            f"{figure}_q3": q3,
            f"{figure}_max": values[-1],
        }


def interleaved_ratios(
    fns: dict[str, Callable[[int], Any]],
    rounds: int,
    *,
    block: int = 1,
    warmup: int = 1,
    min_seconds: float = 0.0,
    before: dict[str, Callable[[], Any]] | None = None,
    after: dict[str, Callable[[], Any]] | None = None,
    progress: Callable | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Timings:
    """Time the variants `fns` ({name: call(i)}, each call synchronous: it returns when its work is done) in
    `rounds` interleaved rounds; take ratios from the result (`Timings.ratio`, `Timings.ratio_figures`).

    Each round times, for every variant in turn, a block of at least `block` consecutive calls that also lasts at
    least `min_seconds`; the variant's figure for the round is the block's time per call. Before round 0 each variant
    makes `warmup` untimed calls (also interleaved). `before[name]()` / `after[name]()` run untimed around each of
    that variant's blocks (warm-up included): e.g. create a fresh input iterator and drop it again, so an idle
    variant does no background work while another is timed. `i` counts each variant's calls from 0 (warm-up
    included), for cycling through inputs. `progress`: optional wrapper of the round range (e.g. tqdm).
    """
    if not fns:
        raise ValueError("interleaved_ratios: no variants")
    if rounds < 1 or block < 1 or warmup < 0 or min_seconds < 0:
        raise ValueError(
            f"interleaved_ratios: rounds={rounds}, block={block} (>= 1), warmup={warmup}, "
            f"min_seconds={min_seconds} (>= 0)"
        )
    before, after = before or {}, after or {}
    names = list(fns)
    counters = dict.fromkeys(names, 0)

    def run_block(name: str, calls: int, seconds: float) -> float:
        fn = fns[name]
        if name in before:
            before[name]()
        n, i = 0, counters[name]
        start = clock()
        while n < calls or (seconds > 0 and clock() - start < seconds):
            fn(i + n)
            n += 1
        elapsed = clock() - start
        counters[name] += n
        if name in after:
            after[name]()
        return elapsed / max(n, 1)

    if warmup:
        for name in names:
            run_block(name, warmup, 0.0)
    times = {name: [] for name in names}
    round_range = range(rounds) if progress is None else progress(range(rounds))
    for r in round_range:
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(run_block(name, block, min_seconds))
    return Timings(times)


def split_rounds(calls: int, block: int) -> tuple[int, int]:
    """(rounds, block) timing about `calls` calls per variant in blocks of `block`: at least one round, and never a
    block larger than the calls asked for."""
    block = max(1, min(block, calls))
    return max(1, -(-calls // block)), block
