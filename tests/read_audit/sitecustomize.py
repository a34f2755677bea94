"""Records the files a stage script opens for reading, for tests/test_dvc_deps.py.

Python imports ``sitecustomize`` at start-up when it is on the path: tests/pipeline_repo.py puts this
folder on PYTHONPATH for the baseline's `dvc repro` and names a log folder in ``PNEUMONIA_READ_LOG``.
Without that variable, or in a process that is not ``python stages/<name>.py`` (DVC itself, git),
nothing is installed. Processes a stage forks (DataLoader and Pool workers) inherit the hook.

Each new path is appended to the process's log at once, one line ``<script>\\t<absolute path>``:
Pool workers end by SIGTERM, where neither atexit nor os._exit would flush a buffer. Only paths under
the stage's working folder (the repository) are kept, each once, so a stage writes a few dozen lines.
"""

import os
import re
import sys

_LOG_FOLDER = os.environ.get("PNEUMONIA_READ_LOG")
_SCRIPT = sys.argv[0] if sys.argv else ""

if _LOG_FOLDER and re.search(r"(^|/)stages/\w+\.py$", _SCRIPT):
    _root = os.path.join(os.getcwd(), "")
    _seen: set[str] = set()
    _log = os.open(os.path.join(_LOG_FOLDER, f"{os.getpid()}.reads"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _record_read(event: str, args: tuple) -> None:
        if event != "open":
            return
        path, mode = args[0], args[1]
        # mode None: os.open, which rmtree and fwalk call with names relative to a dir_fd the event leaves
        # out; Python code reads files through open(). An int path is an open file descriptor.
        if not isinstance(mode, str) or isinstance(path, int) or any(c in mode for c in "wax+"):
            return
        path = os.path.abspath(os.fsdecode(path))
        if path in _seen or not path.startswith(_root):
            return
        _seen.add(path)
        os.write(_log, f"{_SCRIPT}\t{path}\n".encode())  # one write per line: forked workers share the file

    sys.addaudithook(_record_read)
