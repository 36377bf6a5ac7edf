"""Preemption: on SIGUSR1, SIGUSR2 or SIGTERM (what SLURM and submitit send before a time-out or
preemption) the loop finishes its current step, writes a checkpoint, and then lets the previous handler
act: submitit's requeues the job, which resumes from that checkpoint in the same run directory; the
default handler ends the process."""

import os
import signal

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class PreemptionGuard:
    def __init__(self):
        self.received = None
        self.previous = {}

    def __enter__(self):
        for signum in SIGNALS:
            try:
                self.previous[signum] = signal.signal(signum, self._note)
            except ValueError:  # not in the main thread: signals cannot be caught here
                pass
        return self

    def _note(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def hand_over(self):
        """After the checkpoint: run the handler that was there before us, or die by the signal."""
        signum, self.received = self.received, None
        previous = self.previous.get(signum)
        self.__exit__()
        if callable(previous):
            previous(signum, None)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
