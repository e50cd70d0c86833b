"""Run a command as an unprivileged uid that can still reach this Python and this checkout (root only).

    python tests/run_as_user.py UID PATH [PATH ...] -- COMMAND [ARG ...]

Used by the sandbox tests to run as a real non-root user on a machine where the interpreter lives
under an untraversable directory (here /root/.pyenv, /root being mode 700). In a private mount
namespace it hides each untraversable ancestor of the PATHs behind a tmpfs and binds the PATHs
back — the sandbox launcher's own `_expose` — then drops to UID/GID (no supplementary groups) and
execs COMMAND. Nothing outside this process's mount namespace changes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# Loaded by path: the launcher is a standalone stdlib script, and this helper runs before (and
# without) the kaelum package being importable.
_spec = importlib.util.spec_from_file_location(
    "_sandbox_launch", Path(__file__).resolve().parents[1] / "kaelum" / "domains" / "_sandbox_launch.py")
launch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch)


def main(argv: list[str]) -> None:
    if os.geteuid() != 0:
        sys.exit("run_as_user.py must run as root")
    sep = argv.index("--")
    uid, paths, command = int(argv[0]), argv[1:sep], argv[sep + 1:]
    if launch._libc.unshare(launch.CLONE_NEWNS) != 0:
        sys.exit(f"unshare(CLONE_NEWNS) failed: {launch._err()}")
    launch._mount(None, "/", None, launch.MS_REC | launch.MS_PRIVATE)
    report: dict = {}
    launch._expose([os.path.realpath(p) for p in paths], report)
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
