"""A training progress bar on the driver's console, fed by rank 0 through a tiny actor.

The driver keeps worker output off its console (library chatter goes to Ray's log files), so the bar cannot come
from the workers' own stdout; rank 0 posts (step, loss) to this actor and a driver thread draws the bar.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import ray


@ray.remote(num_cpus=0)
class StepBoard:
    def __init__(self, step: int = 0) -> None:
        self.step, self.loss = step, None

    def post(self, step: int, loss: float | None) -> None:
        self.step, self.loss = step, loss

    def read(self) -> tuple[int, float | None]:
        return self.step, self.loss


@contextmanager
def training_bar(total: int, desc: str, interval_s: float = 0.5, start: int = 0):
    """Yields the board for the workers; draws a tqdm bar until the block ends. `start`: a resumed run's step."""
    from tqdm.auto import tqdm

    board = StepBoard.remote(start)
    done = threading.Event()

    def draw() -> None:
        with tqdm(total=total, desc=desc, unit="step", initial=start, dynamic_ncols=True) as bar:
            finished = False
            while not finished:
                finished = done.wait(interval_s)
                step, loss = ray.get(board.read.remote())
                if step != bar.n:  # redraw only on progress: a log file gets one line per change, not per poll
                    if loss is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    bar.update(step - bar.n)

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        yield board
    finally:
        done.set()
        thread.join(timeout=5)
        ray.kill(board)
