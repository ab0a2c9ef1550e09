"""Exec a command under the kernel restrictions our units ask systemd for.

Emulates, without a running systemd, the options that can break a Python
daemon rather than merely hide files:

* ``MemoryDenyWriteExecute=yes`` -> prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)
  (kernel >= 6.3; at least as strict as systemd 252's seccomp version: no
  W+X mapping, no mprotect adding PROT_EXEC);
* ``NoNewPrivileges=yes`` -> PR_SET_NO_NEW_PRIVS;
* ``SystemCallFilter=`` allow-list + deny-list, ``SystemCallErrorNumber=EPERM``,
  ``SystemCallArchitectures=native`` -> a seccomp BPF program built from
  ``systemd-analyze syscall-filter`` (so the groups are this systemd's own);
* ``RestrictAddressFamilies=`` -> socket(2) with another family fails with
  EAFNOSUPPORT, as systemd does.

Capabilities are dropped by the caller with setpriv(1) before this runs.

    python sandbox_exec.py --allow @system-service --deny "@privileged @resources" \\
        --families AF_UNIX,AF_INET,AF_INET6,AF_NETLINK -- CMD ARGS...
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import functools
import os
import re
import socket
import struct
import subprocess
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
# BPF opcodes
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
RET_K = 0x06
UNISTD = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
NR_SOCKET = 41


@functools.cache
def syscall_numbers() -> dict[str, int]:
    text = open(UNISTD).read()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", text)}


@functools.cache
def expand(name: str) -> frozenset[str]:
    """A syscall name or @group -> syscall names, as this systemd defines them."""
    if not name.startswith("@"):
        return frozenset([name])
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= expand(item)
    return frozenset(names)


def allowed_numbers(allow: list[str], deny: list[str]) -> list[int]:
    table = syscall_numbers()
    names = set().union(*(expand(a) for a in allow)) - set().union(*(expand(d) for d in deny))
    return sorted(table[n] for n in names if n in table)


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def build_filter(numbers: list[int], families: list[int]) -> bytes:
    prog = [
        _ins(LD_W_ABS, 4),                              # arch
        _ins(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        _ins(RET_K, RET_KILL_PROCESS),
        _ins(LD_W_ABS, 0),                              # nr
        _ins(JGE_K, X32_SYSCALL_BIT, 0, 1),
        _ins(RET_K, RET_ERRNO | errno.EPERM),
        # socket(family, ...): only the listed families
        _ins(JEQ_K, NR_SOCKET, 0, len(families) + 3),
        _ins(LD_W_ABS, 16),                             # args[0], low 32 bits
    ]
    for i, fam in enumerate(families):
        prog.append(_ins(JEQ_K, fam, len(families) - i, 0))
    prog += [_ins(RET_K, RET_ERRNO | errno.EAFNOSUPPORT), _ins(RET_K, RET_ALLOW),
             _ins(LD_W_ABS, 0)]                         # reload nr for the allow-list
    for nr in numbers:
        prog += [_ins(JEQ_K, nr, 0, 1), _ins(RET_K, RET_ALLOW)]
    prog.append(_ins(RET_K, RET_ERRNO | errno.EPERM))
    return b"".join(prog)


def apply(numbers: list[int], families: list[int], mdwe: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if mdwe and prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE (needs Linux >= 6.3)")
    if prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    code = build_filter(numbers, families)
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--allow", default="@system-service")
    parser.add_argument("--deny", default="")
    parser.add_argument("--families", default="AF_UNIX,AF_INET,AF_INET6,AF_NETLINK")
    parser.add_argument("--no-mdwe", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    numbers = allowed_numbers(args.allow.split(), args.deny.split())
    families = [int(getattr(socket, f)) for f in args.families.split(",") if f]
    apply(numbers, families, not args.no_mdwe)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
