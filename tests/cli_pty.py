"""Drives `tandem config` through a pseudo-terminal, as a user would, for
tests/cli.sh: answers each question as it appears (an invalid answer
first where one is given, which must be asked again), then prints what
the wizard printed.  Exit status: the wizard's, or 3 when a question did
not come within 20 s or an invalid answer was not refused.

  cli_pty.py TANDEM FILE
"""
import os
import pty
import re
import select
import sys
import time

tandem, path = sys.argv[1], sys.argv[2]
# (what the question says, an invalid answer or None, the answer)
script = [
    ("Number of ranks", "zero", "3"),
    ("Hosts", None, ""),
    ("ZeRO stage", "5", "3"),
    ("Offload", "sideways", "params"),
    ("Mixed precision", None, "bf16"),
    ("Gradient accumulation steps", "-2", "4"),
    ("Gradient bucket size", None, ""),
    ("Log level", None, "info"),
]

pid, fd = pty.fork()
if pid == 0:
    os.execv(tandem, [tandem, "config", "--file", path])

seen = b""


def wait_for(pattern):
    """Reads until pattern (a regex on the output since the last call)."""
    global seen
    deadline = time.time() + 20
    start = len(seen)
    while time.time() < deadline:
        if re.search(pattern.encode(), seen[start:]):
            return True
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return False
            if not chunk:
                return False
            seen += chunk
    return False


ok = True
for question, invalid, answer in script:
    if not wait_for(re.escape(question) + r".*\]: "):
        print("no question: " + question)
        ok = False
        break
    if invalid is not None:
        os.write(fd, (invalid + "\n").encode())
        if not wait_for("is not valid.*\n.*" + re.escape(question) + r".*\]: "):
            print("invalid answer %r to %r was not asked again" % (invalid, question))
            ok = False
            break
    os.write(fd, (answer + "\n").encode())
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
if not ok:
    sys.exit(3)
sys.exit(os.waitstatus_to_exitcode(status))
