"""The bench's count of kernel reads (bench.common.KernelReads) against a real process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.common import KernelReads, is_kernel_read

CHILD = """
import socket, sys, time
from pyroute2 import IPRoute
sys.stdin.readline()                      # the tracer is attached
ipr = IPRoute()
ipr.get_links()                           # a netlink dump: a read
ipr.link("get", index=1)                  # one object, not a dump: no read
ipr.close()
a, b = socket.socketpair()
a.send(b"get=1\\n\\n")                    # a UAPI read
a.send(b"set=1\\nlisten_port=1\\n\\n")    # a UAPI write: no read
print("done", flush=True)
time.sleep(30)
"""


def test_the_tracer_counts_dumps_and_uapi_gets_of_the_traced_process_only(
    tmp_path: Path,
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            tracer = KernelReads(tmp_path, child.pid)
            since = time.time()
            try:
                child.stdin.write("go\n")
                child.stdin.flush()
                assert child.stdout.readline().strip() == "done"
                until = time.time()
            finally:
                tracer.close()
        finally:
            child.kill()
    assert tracer.between(since, until) == 2
    assert tracer.between(until + 1, until + 2) == 0


def test_what_counts_as_a_read_in_straces_rendering() -> None:
    dump = (
        "3, [[{nlmsg_len=36, nlmsg_type=RTM_GETROUTE, nlmsg_flags=NLM_F_REQUEST|NLM_F_DUMP, "
        "nlmsg_seq=1, nlmsg_pid=0}, {rtm_family=AF_INET}]], 36, 0, NULL, 0) = 36"
    )
    add = (
        "3, [{nlmsg_len=60, nlmsg_type=RTM_NEWROUTE, "
        "nlmsg_flags=NLM_F_REQUEST|NLM_F_ACK|NLM_F_EXCL|NLM_F_CREATE}], 60, 0, NULL, 0) = 60"
    )
    assert is_kernel_read(dump)
    assert not is_kernel_read(add)
    assert is_kernel_read('7, "get=1\\n\\n", 7, 0, NULL, 0) = 7')
    assert not is_kernel_read('7, "set=1\\nprivate_key=ab"..., 90, 0, NULL, 0) = 90')
    # Before strace knows a socket's protocol it shows the flags as a number.
    raw = "7, [{nlmsg_len=32, nlmsg_type=0x12 /* NLMSG_??? */, nlmsg_flags=NLM_F_REQUEST|0x300"
    assert is_kernel_read(raw + ', nlmsg_seq=255}, "\\x00"], 32, 0, NULL, 0) = 32')
    assert not is_kernel_read(raw.replace("0x300", "0x600") + "}], 32, 0, NULL, 0) = 32")
