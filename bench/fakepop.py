#!/usr/bin/env python3
"""A fake POP3 server that only replays precomputed answers, to measure the
load generator's own ceiling (``python3 bench/run.py --loadgen-ceiling``).

Every maildrop holds ``--messages`` identical messages of ``--size`` octets;
any USER/PASS logs in.  Answers are built once at start, so serving a RETR
costs one ``transport.write`` of a ready bytes object: the load generator,
not this server, should be what saturates its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

from seed import message_template


def build_answers(messages: int, size: int) -> dict[bytes, bytes]:
    header, body = message_template(size)
    raw = (header % 0 + body).replace(b"\n", b"\r\n")
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    answers = {
        b"USER": b"+OK\r\n",
        b"PASS": b"+OK logged in\r\n",
        b"STAT": b"+OK %d %d\r\n" % (messages, messages * len(raw)),
        b"UIDL": b"+OK\r\n"
        + b"".join(b"%d uid%08d\r\n" % (i, i) for i in range(1, messages + 1))
        + b".\r\n",
        b"NOOP": b"+OK\r\n",
        b"QUIT": b"+OK bye\r\n",
        b"RETR": b"+OK %d octets\r\n" % len(raw) + stuffed + b".\r\n",
    }
    return answers


class FakePop(asyncio.Protocol):
    answers: dict[bytes, bytes] = {}

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(b"+OK fake POP3 ready\r\n")  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while b"\r\n" in self.buf:
            line, self.buf = self.buf.split(b"\r\n", 1)
            verb = line[:4].upper()
            self.transport.write(self.answers.get(verb, b"-ERR unknown\r\n"))
            if verb == b"QUIT":
                self.transport.close()
                return


async def serve(port: int, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakePop, "127.0.0.1", port, backlog=1024, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    print(f"fakepop listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="default: any free port")
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tls-cert", default=None, help="serve implicit TLS with this cert")
    parser.add_argument("--tls-key", default=None)
    args = parser.parse_args()
    FakePop.answers = build_answers(args.messages, args.size)
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(serve(args.port, tls))
    else:
        uvloop.run(serve(args.port, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
