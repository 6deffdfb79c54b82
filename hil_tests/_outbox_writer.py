"""Write to an agent outbox until killed, saying what is durable and when.

    python -m hil_tests._outbox_writer DB SEED [BODY_KB]

Loops forever over the real :class:`agent._outbox.Outbox`: stores an update
whose body is derived from (round, seq) so it can be checked after a crash,
and now and then ACKs an older one.  Before each call it prints
``BEGIN put|ack ...`` and after the call returns ``PUT round seq sha`` or
``ACK round seq``: a line after the call means the transaction committed.
The parent kills this process with SIGKILL at a random moment after a
``BEGIN`` line, which lands inside the SQLite transaction most of the time.
"""

import hashlib
import random
import sys

from agent._outbox import Outbox


def body_for(round_: int, tag: int, nbytes: int) -> bytes:
    seed = hashlib.sha256(f"{round_}:{tag}".encode()).digest()
    return (seed * (nbytes // len(seed) + 1))[:nbytes]


def main(argv: list[str]) -> int:
    db, seed = argv[0], int(argv[1])
    body_kb = int(argv[2]) if len(argv) > 2 else 256
    rng = random.Random(seed)
    out = sys.stdout
    with Outbox(db, max_entries=100_000, max_bytes=1 << 34, expiry_s=1e9) as box:
        stored = [(e.round, e.seq) for e in box.pending()]
        round_ = max((r for r, _ in stored), default=0) + 1
        while True:
            if stored and rng.random() < 0.3:
                r, s = stored.pop(rng.randrange(len(stored)))
                out.write(f"BEGIN ack {r} {s}\n")
                out.flush()
                box.ack(r, s)
                out.write(f"ACK {r} {s}\n")
                out.flush()
                continue
            tag = rng.getrandbits(32)
            body = tag.to_bytes(4, "big") + body_for(round_, tag, body_kb * 1024)
            out.write(f"BEGIN put {round_}\n")
            out.flush()
            seq, dropped = box.put(round_, 3, body, now_s=0.0)
            if dropped:
                out.write(f"DROPPED {dropped}\n")
            out.write(f"PUT {round_} {seq} {hashlib.sha256(body).hexdigest()}\n")
            out.flush()
            stored.append((round_, seq))
            round_ += rng.random() < 0.5


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
