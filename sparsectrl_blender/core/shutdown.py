"""Ending a process that imported bpy (the batch and dataset commands): report, then exit deliberately.

The bpy module of some Blender releases fails in its C++ static destructors, after Python itself has finished
(docs/troubleshooting.md, "Blender as a Python module does not exit"): 4.2.x segfaults once a PropertyGroup
with a Python method was registered, or while a bpy.app.timers function is still registered; 4.5.x hangs for
ever in the same cases (its audio device's delayed-close thread still waits on a condition being destroyed).
So a command runs Python's own exit work (atexit: Blender's WM_exit, logging), flushes its output and leaves
with os._exit: the exit status is the command's, whatever the bpy module would do after.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    """Exit with `code` now. Without bpy imported this is sys.exit(code)."""
    if "bpy" not in sys.modules:
        sys.exit(code)
    try:
        atexit._run_exitfuncs()  # Blender's own exit (WM_exit), logging's flush: everything Python would run
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):  # closed or replaced streams: nothing left to write
                pass
        os._exit(code)
