"""Shared numpy arrays: `.npy` images in sealed memfds, mapped by the caller and by
every worker, so nothing is copied and nothing is left in /dev/shm."""

import fcntl
import json
import os
import weakref

_SPEC_VARIABLE = "PROCPOOL_ARRAYS"


def shared_array(shape, dtype="float64", fill=None):
    """A new zero-filled numpy array in shared memory, to pass to a pool as
    `arrays={"name": array}`: workers see it as `procpool.arrays()["name"]`, and what
    they write there the caller sees. Its memory goes with the last reference to it,
    in this process and in the pool."""
    import numpy
    from numpy.lib.format import open_memmap

    fd = os.memfd_create("procpool-array", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        array = open_memmap("/proc/self/fd/%d" % fd, mode="w+", dtype=numpy.dtype(dtype), shape=shape)
        # A worker's mapping can never fault: the image cannot shrink under it.
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except BaseException:
        os.close(fd)
        raise
    array.procpool_fd = fd
    weakref.finalize(array, os.close, fd)
    if fill is not None:
        array[...] = fill
    return array


def array_fd(name, array):
    """The memfd behind a pool's `arrays` entry, or a TypeError that says what to pass."""
    fd = getattr(array, "procpool_fd", None)
    if fd is None:
        raise TypeError(
            "arrays[%r] is not a shared array; make it with procpool.shared_array(shape, dtype)" % name
        )
    return fd


_mapped = None


def arrays():
    """In a worker: the pool's shared arrays by name, as numpy memmaps (writes land in
    the caller's array). Empty outside a worker or in a pool without arrays."""
    global _mapped
    if _mapped is None:
        specs = json.loads(os.environ.get(_SPEC_VARIABLE) or "{}")
        if specs:
            import numpy

            _mapped = {
                name: numpy.load(spec["path"], mmap_mode="r+" if spec.get("writable") else "r")
                for name, spec in specs.items()
            }
        else:
            _mapped = {}
    return _mapped
