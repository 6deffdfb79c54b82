"""A TCP sink and source to measure the emulated links from inside namespaces.

python -m hil_tests._probe sink PORT
    accept connections forever; for each, count the bytes until EOF and
    print one JSON line {"bytes": n, "seconds": t}
python -m hil_tests._probe send HOST PORT NBYTES [TIMEOUT_S]
    connect, send NBYTES, close; print {"bytes": n, "seconds": t} or
    {"error": "..."} and exit 1
python -m hil_tests._probe echo PORT
    echo every byte back on every connection, one thread per connection
python -m hil_tests._probe rtt HOST PORT N
    send N 64-byte pings one after the other, each after the previous echo;
    print {"rtt_ms": [...], "median_ms": m}
"""

import json
import socket
import statistics
import sys
import threading
import time


def sink(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port), reuse_port=True)
    print(json.dumps({"listening": port}), flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            n, t0 = 0, None
            while chunk := conn.recv(65536):
                if t0 is None:
                    t0 = time.monotonic()
                n += len(chunk)
            dt = time.monotonic() - (t0 or time.monotonic())
            print(json.dumps({"bytes": n, "seconds": dt}), flush=True)


def send(host: str, port: int, nbytes: int, timeout_s: float) -> int:
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            buf = b"\0" * 65536
            left = nbytes
            while left > 0:
                left -= s.send(buf[: min(left, len(buf))])
            s.shutdown(socket.SHUT_WR)
            s.recv(1)  # wait for the sink to close: everything was delivered
    except OSError as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"bytes": nbytes, "seconds": time.monotonic() - t0}), flush=True)
    return 0


def echo(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port), reuse_port=True)
    print(json.dumps({"listening": port}), flush=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def rtt(host: str, port: int, n: int) -> int:
    ping = b"p" * 64
    rtt_ms = []
    try:
        with socket.create_connection((host, port), timeout=10.0) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(n):
                t0 = time.perf_counter()
                s.sendall(ping)
                got = 0
                while got < len(ping):
                    chunk = s.recv(len(ping) - got)
                    if not chunk:
                        raise ConnectionError("echo closed the connection")
                    got += len(chunk)
                rtt_ms.append((time.perf_counter() - t0) * 1000.0)
    except OSError as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    median_ms = statistics.median(rtt_ms)
    print(json.dumps({"rtt_ms": rtt_ms, "median_ms": median_ms}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["sink"] and len(argv) == 2:
        sink(int(argv[1]))
        return 0
    if argv[:1] == ["send"] and len(argv) in (4, 5):
        timeout_s = float(argv[4]) if len(argv) == 5 else 30.0
        return send(argv[1], int(argv[2]), int(argv[3]), timeout_s)
    if argv[:1] == ["echo"] and len(argv) == 2:
        echo(int(argv[1]))
        return 0
    if argv[:1] == ["rtt"] and len(argv) == 4:
        return rtt(argv[1], int(argv[2]), int(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
