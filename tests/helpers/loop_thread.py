"""A server running on its own event loop in a thread, for tests."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Self


@dataclass(kw_only=True)
class LoopThread:
    """Subclasses implement ``_main``: start listening, call ``self._ready.set()``,
    then serve until stopped."""

    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"{type(self).__name__} did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        raise NotImplementedError
