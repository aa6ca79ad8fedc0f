"""Walks in steps: run at once, or with the event loop running in between."""

from __future__ import annotations

import asyncio

from custom_components.v2g.engine import (
    Steps,
    async_chunks,
    async_run_steps,
    chunks,
    run_steps,
)


def _three_steps(log: list[str]) -> Steps[int]:
    for step in range(3):
        log.append(f"step {step}")
        yield
    return 42


def test_run_steps_runs_every_step_at_once() -> None:
    log: list[str] = []
    assert run_steps(_three_steps(log)) == 42
    assert log == ["step 0", "step 1", "step 2"]


async def test_async_run_steps_lets_the_loop_run_between_steps() -> None:
    log: list[str] = []
    loop = asyncio.get_running_loop()

    def tick() -> None:
        log.append("loop")

    loop.call_soon(tick)
    assert await async_run_steps(_three_steps(log)) == 42
    # Run at once, the steps would all come before the callback.
    assert log == ["step 0", "loop", "step 1", "step 2"]


async def test_chunks_of_a_given_size() -> None:
    items = list(range(5))
    assert [list(c) for c in chunks(items, 2)] == [[0, 1], [2, 3], [4]]
    walked = [list(c) async for c in async_chunks(items, 3)]
    assert walked == [[0, 1, 2], [3, 4]]
