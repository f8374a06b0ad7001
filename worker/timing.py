"""The sleep and clock every waiting part of the worker takes as an argument, so that tests
drive time instead of waiting for it."""

from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]  # asyncio.sleep, or a test's fake
Clock = Callable[[], float]  # seconds; the limiter's is Unix time, as Redis TIME is
