"""qlab.heap: inside reuse_freed_memory() a freed large tensor's memory is reused without page faults; outside
(and after it) glibc maps fresh pages for each one. Counted with the kernel's minor-fault counter."""

import platform
import resource

import torch

from qlab.heap import reuse_freed_memory

SIZE = 256 << 20  # far above glibc's largest automatic mmap threshold (32 MiB)


def _faults_of_a_second_allocation() -> int:
    def touch():
        t = torch.empty(SIZE // 4)
        t.fill_(1.0)
        del t

    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_large_tensors_are_reused_only_inside():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        with reuse_freed_memory() as active:
            assert active is False  # nothing to tune there: a no-op that says so
        return
    outside = _faults_of_a_second_allocation()
    with reuse_freed_memory() as active:
        assert active is True
        inside = _faults_of_a_second_allocation()
        with reuse_freed_memory():
            pass
        nested_exit = _faults_of_a_second_allocation()  # the inner exit keeps the outer setting
    after = _faults_of_a_second_allocation()
    assert outside >= 10  # (4 KiB pages: ≈ 65,536; transparent huge pages: ≈ 128)
    assert inside * 10 <= outside and nested_exit * 10 <= outside
    assert after * 2 >= outside  # glibc's behaviour is back
