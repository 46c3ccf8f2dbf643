"""``hub up`` rotates its components' logs while they write to them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from hub.supervisor import _tail, rotate_log

#: A component as ``hub up`` starts it: its output appended to its log, a line every 5 ms.
WRITER = """
import sys, time
for number in range(100_000):
    print(f"line {number:06d} " + "x" * 90, flush=True)
    time.sleep(0.005)
"""


def test_a_log_past_its_size_is_rotated_while_its_writer_goes_on(tmp_path: Path) -> None:
    log = tmp_path / "courrier.log"
    with open(log, "ab") as output:
        writer = subprocess.Popen([sys.executable, "-c", WRITER], stdout=output)
    try:
        for _ in range(3):
            deadline = time.monotonic() + 20
            while log.stat().st_size < 10_000 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert rotate_log(log, max_bytes=10_000, keep=2)
        time.sleep(0.2)  # the writer goes on in the emptied file
    finally:
        writer.kill()
        writer.wait()

    assert not rotate_log(log, max_bytes=10**9)  # under the size: left alone
    newest, older = (tmp_path / "courrier.log.1"), (tmp_path / "courrier.log.2")
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "courrier.log",
        "courrier.log.1",
        "courrier.log.2",  # the oldest of three rotations was dropped
    ]
    for path in (log, newest, older):
        text = path.read_bytes()
        # Appended, not written at the writer's old offset: no hole of NULs at the start.
        assert b"\0" not in text
        assert text.startswith(b"line ")
    numbers = [int(path.read_text().split()[1]) for path in (older, newest, log)]
    assert numbers == sorted(numbers)  # each newer log starts later
    assert _tail(log, lines=1).startswith("line ")
