"""The synthetic editor on a simulated GPU: the same pixels, at a GPU's pace.

A benchmark of the mining loop on a CPU-only machine needs an editor that costs what a
real one costs without using the cores the judges need. This editor sleeps instead:
each ``edit`` call takes ``seconds_per_image × n_images`` of wall time (the re-render
counts towards it; it sleeps the rest), one call at a time in the process that holds it
(``work = "device"``, like a model resident on an accelerator). The cost is linear in
the images of a call: a large editor at 1024² is compute-bound, so batching it saves
launch overhead and idle gaps, not per-image time. Its outputs, model id and truth
records are exactly the plain editor's, so the simulated time changes no table.
"""

from __future__ import annotations

import threading
import time

from PIL import Image

from .editor import SyntheticEditor
from .truth import SyntheticTruth


class SimulatedGpuEditor(SyntheticEditor):
    """``SyntheticEditor`` that spends ``seconds_per_image`` per image of each call and
    reports ``calls``, ``images`` and ``device_seconds`` like the diffusers editors."""

    work = "device"  # one call at a time, in process: the simulated GPU

    def __init__(
        self,
        truth: SyntheticTruth,
        seconds_per_image: float,
        hard_share: float = 0.0,
        spread: float | str = 0.0,
    ) -> None:
        if not seconds_per_image > 0:
            raise ValueError(
                f"seconds_per_image must be > 0, got {seconds_per_image!r} "
                "(use SyntheticEditor for no simulated GPU)"
            )
        super().__init__(truth, hard_share, spread=spread)
        self.seconds_per_image = float(seconds_per_image)
        self.counters = {"calls": 0.0, "images": 0.0, "device_seconds": 0.0}
        self._lock = threading.Lock()

    def edit(
        self,
        images: list[Image.Image],
        instructions: list[str],
        seeds: list[int],
        steps: list[int],
        guidance: float,
    ) -> list[Image.Image]:
        """The plain editor's images, returned ``seconds_per_image × len(images)`` after
        the call began (later only when re-rendering took longer)."""
        with self._lock:  # one call on the device at a time, even from several threads
            t0 = time.perf_counter()
            out = super().edit(images, instructions, seeds, steps, guidance)
            left = self.seconds_per_image * len(images) - (time.perf_counter() - t0)
            if left > 0:
                time.sleep(left)
            self.counters["calls"] += 1
            self.counters["images"] += len(images)
            self.counters["device_seconds"] += time.perf_counter() - t0
        return out

    def usage(self) -> dict[str, float]:
        """Cumulative calls, images and device (here: simulated) seconds."""
        with self._lock:
            return dict(self.counters)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
