"""A TCP proxy in front of PostgreSQL for fault injection: forward, black-hole, add latency, cut.

pproxy (used for the plain link up/down test) cannot hold bytes without answering or delay them,
which is what a black-holed link and a distant database look like; this small asyncio proxy can.
It also counts round trips: each time the server starts answering after the client has sent.
"""

from __future__ import annotations

import asyncio
import threading
import time


class FaultProxy:
    """Listens on 127.0.0.1:`port` and forwards to `target`. Thread-safe controls; runs its own loop."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None):
        self.target = (target_host, target_port)
        self.port = port or 0  # 0: the kernel picks a free one when the proxy listens (no race)
        self.blackhole = False  # True: accept and read, never forward, never answer
        self.delay = 0.0  # seconds added one way, so a round trip costs 2 * delay more
        self.round_trips = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="faultproxy")

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def cut(self) -> None:
        """Reset every open connection (the link drops); new ones are still accepted."""
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(5)

    # -- internals --------------------------------------------------------------------------------
    async def _listen(self):
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self):
        self._server.close()
        await self._cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _cut(self):
        for writer in list(self._writers):
            transport = writer.transport
            if transport is not None:
                transport.abort()
        self._writers.clear()

    async def _handle(self, client_reader, client_writer):
        self.connections += 1
        self._writers.add(client_writer)
        if self.blackhole:
            await self._swallow(client_reader)
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.add(server_writer)
        state = {"last": None}
        await asyncio.gather(
            self._pipe(client_reader, server_writer, state, "client"),
            self._pipe(server_reader, client_writer, state, "server"),
            return_exceptions=True,
        )
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            if writer.transport is not None:
                writer.transport.abort()

    async def _swallow(self, reader):
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass

    async def _pipe(self, reader, writer, state, side):
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await queue.get()
                if data is None:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.blackhole:
                    continue  # held and dropped: the peer never hears back
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if side == "server" and state["last"] == "client":
                    self.round_trips += 1
                state["last"] = side
                queue.put_nowait((time.monotonic() + self.delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait((0, None))
            await asyncio.gather(sender, return_exceptions=True)
            if writer.transport is not None:
                writer.transport.abort()
