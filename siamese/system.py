"""What Siamese asks of the operating system and its C library: one place for ctypes and pids.

glibc keeps memory freed by a thread in that thread's arena: a server whose eight request threads each
decoded one large image holds all of it (an adversarial run: 9.5 GB after 6 uploads). Capping the
arenas and trimming after large decodes keep a server near its idle size. Elsewhere (musl, macOS)
these are no-ops. Killed processes leave temporary files and folders named with their pid; whether
that pid still runs says whether they may be removed.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

M_ARENA_MAX = -8  # glibc's malloc.h
ALLOCATOR_ARENAS = 2


def _glibc(name: str, argtypes: list, restype: type) -> Callable | None:
    """A function of glibc, or None where the C library is not glibc (or lacks it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others
            return None
        function = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function


_mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
_malloc_trim = _glibc("malloc_trim", [ctypes.c_size_t], ctypes.c_int)


def bound_allocator_arenas(arenas: int = ALLOCATOR_ARENAS) -> bool:
    """Cap glibc's malloc arenas (mallopt(M_ARENA_MAX)); True when done.

    A no-op (False) where the C library is not glibc, and where MALLOC_ARENA_MAX is set: whoever set it
    chose. Arenas made before the call stay; call it before the request threads start.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or _mallopt is None:
        return False
    return _mallopt(M_ARENA_MAX, arenas) == 1


def return_freed_memory() -> bool:
    """Hand the memory the process has freed back to the system (glibc: malloc_trim(0), every arena);
    False where the C library has no such call."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_prctl = _glibc("prctl", [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong],
                ctypes.c_int)


def end_with_parent(parent: int, signal_number: int) -> bool:
    """Have the kernel send `signal_number` to this process when its parent dies (a server killed with
    SIGKILL must not leave workers serving its port); True where it could. `parent`: the pid this
    process was forked from, checked after asking, since it may have died already."""
    if _prctl is None or _prctl(PR_SET_PDEATHSIG, signal_number, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), signal_number)
    return True


def process_running(pid: int) -> bool:
    """Whether a process with this pid runs (as any user): its temporary files are still its own."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
