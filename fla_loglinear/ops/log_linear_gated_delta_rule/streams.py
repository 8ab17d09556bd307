"""The side CUDA streams of the chunked log-linear gated delta rule (``GDNLaunchPlan.streams``)."""
from __future__ import annotations

import contextlib
import functools

import torch

from fla_loglinear.ops.log_linear_gated_delta_rule.plan import device_index

__all__ = ["Fork"]


@functools.lru_cache(maxsize=None)
def _side_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(index)


@functools.lru_cache(maxsize=None)
def _lead_stream(index: int) -> torch.cuda.Stream:
    # the highest priority torch gives (it clamps the number): when the sequential chain's next launch
    # and the side stream's many-program kernel both wait for room on the SMs, the chain's go first
    return torch.cuda.Stream(index, priority=-100)


class Fork:
    """A side CUDA stream forked from the current one, for launches that can share the SMs with the
    current stream's; elsewhere (or ``on`` false) everything runs in program order.  Whatever the side
    stream touches must be allocated before the fork: the current stream waits for the side stream at
    :meth:`join`, and nothing is freed before."""

    def __init__(self, device: torch.device, on: bool, lead_priority: bool):
        self.on = on and device.type == "cuda"
        if self.on:
            index = device_index(device)
            self.origin = torch.cuda.current_stream(device)
            self.main = _lead_stream(index) if lead_priority else self.origin
            self.side = _side_stream(index)
            self.main.wait_stream(self.origin)
            self.side.wait_stream(self.origin)

    def chain(self):
        """A context in which launches go to the fork's main stream (with ``lead_priority`` one of the
        highest priority, so that the side stream's kernels never hold up the sequential chain)."""
        return torch.cuda.stream(self.main) if self.on else contextlib.nullcontext()

    def run_beside(self, fn, after=None):
        """``fn()`` on the side stream, after the current stream's event ``after`` if given."""
        if not self.on:
            return fn()
        with torch.cuda.stream(self.side):
            if after is not None:
                self.side.wait_event(after)
            fn()

    def mark(self):
        """An event at this point of the current stream (``None`` when not forked)."""
        return self.main.record_event() if self.on else None

    def mark_beside(self):
        """An event at this point of the side stream (``None`` when not forked)."""
        return self.side.record_event() if self.on else None

    def wait(self, event):
        """The current stream waits for ``event`` (from :meth:`mark_beside`; ``None``: nothing to wait for)."""
        if self.on and event is not None:
            self.main.wait_event(event)

    def join(self):
        if self.on:
            self.main.wait_stream(self.side)
            self.origin.wait_stream(self.main)
