"""Long walks over the fleet cut into steps, so a caller can yield between them.

A *steps* function is a generator that does a bounded chunk of work (at most
`STEP_SIZE` vehicles) between two ``yield``s and returns its result. Run to the
end at once with `run_steps`, or with `async_run_steps`, which lets the event
loop run other callbacks between two chunks: a walk over 10,000 vehicles then
never holds the loop for more than a few milliseconds at a time. Async code
walks a long sequence with `async_chunks` for the same effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Iterator, Sequence

# Vehicles handled between two yields (a few milliseconds of work).
STEP_SIZE = 1_000

type Steps[T] = Generator[None, None, T]


def run_steps[T](steps: Steps[T]) -> T:
    """Run every step now; return the result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def async_run_steps[T](steps: Steps[T]) -> T:
    """Run the steps, letting the event loop run between two of them."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await asyncio.sleep(0)


def chunks[T](items: Sequence[T], size: int | None = None) -> Iterator[Sequence[T]]:
    """`items` a chunk of at most `size` (default `STEP_SIZE`) at a time."""
    step = size or STEP_SIZE
    for start in range(0, len(items), step):
        yield items[start : start + step]


async def async_chunks[T](
    items: Sequence[T], size: int | None = None
) -> AsyncIterator[Sequence[T]]:
    """`chunks(items, size)`, the event loop running between two chunks."""
    for index, chunk in enumerate(chunks(items, size)):
        if index:
            await asyncio.sleep(0)
        yield chunk
