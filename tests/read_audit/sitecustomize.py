"""Records the files a stage script opens, for tests/test_dvc_deps.py.

Python imports ``sitecustomize`` at start-up when it is on the path: tests/pipeline_repo.py puts this
folder on PYTHONPATH for the baseline's `dvc repro` and names a log folder in ``PNEUMONIA_READ_LOG``.
Without that variable, or in a process that is not ``python stages/<name>.py`` (DVC itself, git),
nothing is installed. Processes a stage forks (DataLoader and Pool workers) inherit the hook.

One line ``<script>\\t<r|w>\\t<absolute path>`` per file first read or first written, in order: writes
too, because a file the stage wrote earlier in the run (an atomic temporary, Lightning's checkpoint)
is its own work when it reads it back, not an input. Each line is appended at once: Pool workers end
by SIGTERM, where neither atexit nor os._exit would flush a buffer. Only paths under the stage's
working folder (the repository) are kept, each once, so a stage writes a few dozen lines.
"""

import os
import re
import sys

_LOG_FOLDER = os.environ.get("PNEUMONIA_READ_LOG")
_SCRIPT = sys.argv[0] if sys.argv else ""
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT

if _LOG_FOLDER and re.search(r"(^|/)stages/\w+\.py$", _SCRIPT):
    _root = os.path.join(os.getcwd(), "")
    _seen: set[tuple[str, str]] = set()
    _log = os.open(os.path.join(_LOG_FOLDER, f"{os.getpid()}.reads"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _accesses(event: str, args: tuple) -> tuple[tuple[str, object], ...]:
        """``(kind, path)`` of each file the event reads ("r") or writes ("w")."""
        if event == "open" and not isinstance(args[0], int):  # an int: a file descriptor already open
            mode, flags = args[1], args[2]
            if mode is not None:  # open()
                return (("w" if any(c in mode for c in "wax+") else "r", args[0]),)
            # os.open: only its writes, as rmtree opens folders for reading by names relative to a dir_fd
            return (("w", args[0]),) if flags & _WRITE_FLAGS else ()
        if event == "os.rename":  # os.rename and os.replace: what an atomic write puts in place
            return (("w", args[1]),)
        if event == "os.link":  # a hard link is a copy: of the source, read
            return (("r", args[0]), ("w", args[1]))
        return ()

    def _record(event: str, args: tuple) -> None:
        for kind, name in _accesses(event, args):
            path = os.path.abspath(os.fsdecode(name))
            if (kind, path) in _seen or not path.startswith(_root):
                continue
            _seen.add((kind, path))
            os.write(_log, f"{_SCRIPT}\t{kind}\t{path}\n".encode())  # one write per line: forked workers share the file

    sys.addaudithook(_record)
