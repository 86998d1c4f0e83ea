"""qlab.heap: inside reuse_freed_memory() a freed large block's memory is reused without page faults; outside
(and after it) glibc maps fresh pages for each one. Counted with the kernel's minor-fault counter, in a fresh
interpreter (a process whose heap already holds large free holes serves big requests from them without any mmap),
with plain malloc: the setting is what is tested. (torch's 64-byte-aligned allocations go through memalign, which
asks for a little more than the freed hole of the same tensor size; in some processes that hole is then never
reused — see the note in qlab.heap.)"""

import json
import platform
import subprocess
import sys

from qlab.heap import reuse_freed_memory

PROBE = """
import ctypes, json, resource
from qlab.heap import reuse_freed_memory

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 << 20  # far above glibc's largest automatic mmap threshold (32 MiB)

def faults_of_a_second_allocation():
    def touch():
        p = libc.malloc(ctypes.c_size_t(SIZE))
        ctypes.memset(p, 1, SIZE)
        libc.free(p)
    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"outside": faults_of_a_second_allocation()}
with reuse_freed_memory() as active:
    out["active"] = active
    out["inside"] = faults_of_a_second_allocation()
    with reuse_freed_memory():
        pass
    out["nested_exit"] = faults_of_a_second_allocation()  # the inner exit keeps the outer setting
out["after"] = faults_of_a_second_allocation()
print(json.dumps(out))
"""


def test_freed_large_tensors_are_reused_only_inside():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        with reuse_freed_memory() as active:
            assert active is False  # nothing to tune there: a no-op that says so
        return
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["active"] is True
    assert r["outside"] >= 10  # (4 KiB pages: ≈ 65,536; transparent huge pages: ≈ 128)
    assert r["inside"] * 10 <= r["outside"] and r["nested_exit"] * 10 <= r["outside"]
    assert r["after"] * 2 >= r["outside"]  # glibc's behaviour is back
