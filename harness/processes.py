"""What every harness that starts a server process shares: stopping it (or killing it) by its pid."""

from __future__ import annotations

import signal
import subprocess


class OwnProcess:
    """A process a harness started (`self.process`), stopped only by its own pid."""

    process: subprocess.Popen | None = None

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed server is."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
