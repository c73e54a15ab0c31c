"""The gunicorn worker: uvicorn_worker's, serving the app with our protocol (protocol.py) through our
acceptor (acceptor.py), and stopping by itself when its master is gone.

What it cannot take from uvicorn as it is, and why: uvicorn's Server makes asyncio servers for the
listening sockets, and our worker must take connections through FairAcceptor (a share per worker);
so `startup` is extended (the lifespan is uvicorn's, then our acceptors) and `shutdown` closes each
acceptor (uvicorn's closed gunicorn's sockets a second time). The protocol is made by our server with
the app's ServingOptions, not through attributes added to uvicorn's Config.
"""

from __future__ import annotations

import asyncio
import os
import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from swagger_server.observability import refusal_recorder
from swagger_server.serving import ServingOptions
from swagger_server.serving.acceptor import FairAcceptor, Share
from swagger_server.serving.protocol import LimitedHttpToolsProtocol
from swagger_server.state import of_flask

ORPHAN_CHECK = 1.0  # seconds between a worker's looks at whether its master is still there


class StoreUvicornWorker(UvicornWorker):
    """gunicorn worker class: uvicorn with uvloop and the limited httptools protocol."""

    CONFIG_KWARGS = {"loop": "auto", "http": LimitedHttpToolsProtocol, "ws": "none"}

    async def _serve(self) -> None:
        # As uvicorn_worker's, with our Server: fair accepts, each listening socket closed once (below).
        self.config.app = self.wsgi
        state = of_flask(self.wsgi.app)
        options = ServingOptions(
            limits=state.limits,
            record_refusal=refusal_recorder(state.metrics),
            # This worker's slot in the master's table of open connections (gunicorn.conf.py's pre_fork).
            share=Share(*getattr(self, "store_api_slot", (None, None))),
        )
        server = _Server(config=self.config, options=options)
        self._install_sigquit_handler()
        orphan_watch = asyncio.get_running_loop().create_task(self._stop_if_orphaned(server))
        try:
            await server.serve(sockets=self.sockets)
        finally:
            orphan_watch.cancel()
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def _stop_if_orphaned(self, server) -> None:
        """A worker whose master is gone (killed with SIGKILL: no one to stop or replace it, its port
        and metrics unattended) stops, gracefully, within ORPHAN_CHECK seconds, instead of serving on."""
        while not server.should_exit:
            await asyncio.sleep(ORPHAN_CHECK)
            if os.getppid() != self.ppid:
                self.log.error("worker %s: its master (pid %s) is gone; stopping", os.getpid(), self.ppid)
                server.should_exit = True
                return


class _Server(Server):
    """uvicorn's Server, taking its connections through FairAcceptor (acceptor.py) rather than asyncio's
    servers, and closing each listening socket once (uvicorn's own shutdown would close gunicorn's
    socket objects a second time, after the asyncio servers had: "Error while closing socket [Errno 9]
    Bad file descriptor", and a close of whatever reused that descriptor number)."""

    def __init__(self, config, options: ServingOptions):
        super().__init__(config=config)
        self.options = options

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=[])  # the lifespan (the app's start) and no listener yet
        if self.should_exit or not self.started:
            return
        config = self.config
        loop = asyncio.get_running_loop()

        options = self.options

        def create_protocol():
            return LimitedHttpToolsProtocol(
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=loop,
                options=options,
            )

        self.servers = [FairAcceptor(loop, listener, create_protocol, options.share) for listener in sockets or []]

    async def shutdown(self, sockets=None) -> None:
        await super().shutdown(sockets=None)  # closes each FairAcceptor, hence its socket
