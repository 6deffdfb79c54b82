"""A TCP sink and source to measure the emulated links from inside namespaces.

python -m hil_tests._probe sink PORT
    accept connections forever; for each, count the bytes until EOF and
    print one JSON line {"bytes": n, "seconds": t}
python -m hil_tests._probe send HOST PORT NBYTES [TIMEOUT_S]
    connect, send NBYTES, close; print {"bytes": n, "seconds": t} or
    {"error": "..."} and exit 1
"""

import json
import socket
import sys
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


def main(argv: list[str]) -> int:
    if argv[:1] == ["sink"] and len(argv) == 2:
        sink(int(argv[1]))
        return 0
    if argv[:1] == ["send"] and len(argv) in (4, 5):
        timeout_s = float(argv[4]) if len(argv) == 5 else 30.0
        return send(argv[1], int(argv[2]), int(argv[3]), timeout_s)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
