"""One-way link delay in user space: a TCP proxy that holds every chunk.

``tc netem`` is not available on these machines (only tbf and htb), so the
propagation delay of a satellite link is added by a forwarding proxy placed
between the agent and the daemon.  Each direction is a reader that stamps
every chunk with ``arrival + one_way_ms`` and a writer that sends it when
that instant comes, so chunks keep their order and a stream of small
messages is delayed by the same amount as a single one.  A round trip
through the proxy gains ``2 * one_way_ms``.

What this does not emulate: the delay sits above TCP, not below it, so the
TCP handshake, ACKs and retransmissions between the agent and the proxy do
not see it, and the congestion window does not grow as slowly as it would
over a real 30 ms path.  Application-level round trips (ZMQ HELLO, update,
ACK) do see it, and those are what the agent's timing depends on.

python -m hil_tests._delay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT
    ONE_WAY_MS
    forward every accepted connection to TARGET, each direction delayed by
    ONE_WAY_MS; prints one JSON line {"listening": port} when ready
"""

import asyncio
import json
import sys
import time

CHUNK_BYTES = 65536
# Bounds what the proxy holds per direction when the next hop is slower (a
# link that is down): 256 chunks of at most 64 kB.
QUEUE_CHUNKS = 256


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    one_way_s: float,
) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def read() -> None:
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                await queue.put((time.monotonic() + one_way_s, chunk))
        except OSError:
            pass  # a reset ends this direction like an EOF
        await queue.put((time.monotonic() + one_way_s, b""))  # EOF, delayed too

    async def write() -> None:
        while True:
            due_s, chunk = await queue.get()
            wait_s = due_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    reading = asyncio.ensure_future(read())
    try:
        await write()
    finally:
        reading.cancel()


async def _serve_one(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    target: tuple[str, int],
    one_way_s: float,
) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.close()
        return
    up = asyncio.ensure_future(_pump(client_r, server_w, one_way_s))
    down = asyncio.ensure_future(_pump(server_r, client_w, one_way_s))
    # Either side failing (a reset, a daemon killed) ends the connection;
    # a clean half-close waits for the other direction to finish.
    try:
        await asyncio.gather(up, down)
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        up.cancel()
        down.cancel()
        for w in (client_w, server_w):
            w.close()


async def serve(
    listen: tuple[str, int], target: tuple[str, int], one_way_ms: float
) -> None:
    if not 0 <= one_way_ms <= 10_000:
        raise ValueError(f"one_way_ms={one_way_ms}; expected 0 to 10000 ms")
    one_way_s = one_way_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: _serve_one(r, w, target, one_way_s),
        *listen,
        reuse_address=True,
    )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"listening": port, "one_way_ms": one_way_ms}), flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, t_host, t_port, one_way_ms = argv
    asyncio.run(serve((host, int(port)), (t_host, int(t_port)), float(one_way_ms)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
