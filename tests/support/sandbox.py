"""The unit's sandbox without systemd as PID 1: what of ``systemd/appliance.service`` can
be rebuilt here, to run numpy, onnxruntime, DuckDB and the service itself under it.

Rebuilt (``sandboxed``):

* ``SystemCallFilter=`` lines of the unit, read from it and applied in systemd's order
  (the first line's allow-list, ``~`` lines remove, later lines add back), with
  ``SystemCallErrorNumber=EPERM``, as a seccomp filter loaded through libseccomp;
  the groups' members come from ``systemd-analyze syscall-filter``;
* ``MemoryDenyWriteExecute=``: no mmap with write and execute, no mprotect or
  pkey_mprotect adding execute, no shmat with SHM_EXEC (systemd's rules);
* ``SystemCallArchitectures=native`` (libseccomp's default: the native arch only);
* ``RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6`` (another family gets EPERM
  here, EAFNOSUPPORT under systemd);
* ``ProtectProc=invisible``: a fresh /proc with ``hidepid=invisible`` in a new mount
  namespace (with ``subset=pid`` too, as ``ProcSubset=pid`` would, onnxruntime
  loses /proc/cpuinfo: the unit leaves that one off);
* ``ProtectSystem=strict`` with the data folder writable: / remounted read-only;
* ``User=`` (nobody here), ``CapabilityBoundingSet=`` empty, ``NoNewPrivileges``.

Not rebuilt: ``PrivateUsers``, ``PrivateDevices``, ``PrivateTmp``, ``ProtectKernel*``,
``RestrictNamespaces``, ``LockPersonality``, ``RestrictRealtime`` and the other
switches the service has no reason to touch; they need systemd (``systemd-run -p``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "appliance.service"
NOBODY = 65534

#: Runs in the sandbox: loads the seccomp filter described by argv[1] (JSON), then execs
#: argv[2:].  libseccomp sets no_new_privs itself when it loads the filter.
LAUNCHER = r"""
import ctypes, json, os, sys
spec = json.loads(sys.argv[1])
lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.c_void_p]
lib.seccomp_load.argtypes = [ctypes.c_void_p]

class Cmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

ALLOW, EPERM, MASKED_EQ, EQ = 0x7FFF0000, 0x00050000 | 1, 7, 4
ctx = lib.seccomp_init(EPERM)
def rule(name, *cmps):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        return  # not a system call of this architecture
    arr = (Cmp * max(1, len(cmps)))(*cmps)
    rc = lib.seccomp_rule_add_array(ctx, ALLOW, nr, len(cmps), arr)
    assert rc == 0, (name, rc)
conditional = set(spec["conditional"])
for name in spec["allow"]:
    if name not in conditional:
        rule(name)
W, X = 2, 4
if "mmap" in spec["allow"]:
    for prot in (0, W, X):  # never both
        rule("mmap", Cmp(2, MASKED_EQ, W | X, prot))
for name in ("mprotect", "pkey_mprotect"):
    if name in spec["allow"]:
        rule(name, Cmp(2, MASKED_EQ, X, 0))
if "shmat" in spec["allow"]:
    rule("shmat", Cmp(2, MASKED_EQ, 0o100000, 0))
if "socket" in spec["allow"]:
    for family in spec["families"]:
        rule("socket", Cmp(0, EQ, family, 0))
assert lib.seccomp_load(ctx) == 0
os.execv(sys.argv[2], sys.argv[2:])
"""

FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}


def available() -> str | None:
    """Why the sandbox cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (mount namespace, setpriv)"
    for tool in ("systemd-analyze", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    try:
        import ctypes

        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "no libseccomp.so.2"
    return None


def unit_settings() -> list[tuple[str, str]]:
    """(key, value) of the unit's [Service] lines, in order."""
    out = []
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def syscall_groups() -> dict[str, list[str]]:
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                          text=True, check=True, timeout=60).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.startswith("    ") and \
                not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def allowed_syscalls() -> set[str]:
    """The unit's SystemCallFilter= lines, combined as systemd combines them."""
    groups = syscall_groups()
    allowed: set[str] | None = None
    for key, value in unit_settings():
        if key != "SystemCallFilter":
            continue
        deny = value.startswith("~")
        names = expand(value.lstrip("~").split(), groups)
        if allowed is None:
            assert not deny, "the unit's filter is an allow-list"
            allowed = names
        else:
            allowed = allowed - names if deny else allowed | names
    assert allowed is not None, "the unit has no SystemCallFilter="
    return allowed


def families() -> list[int]:
    (value,) = [v for k, v in unit_settings() if k == "RestrictAddressFamilies"]
    return [FAMILIES[name] for name in value.split()]


def sandboxed(argv: list[str], writable: Path) -> list[str]:
    """``argv`` as a command line that runs it in the rebuilt sandbox; ``writable`` (owned
    by nobody) is the one folder it may write, as the StateDirectory."""
    settings = dict(unit_settings())
    assert settings["MemoryDenyWriteExecute"] == "true"
    spec = json.dumps({"allow": sorted(allowed_syscalls()), "families": families(),
                       "conditional": ["mmap", "mprotect", "pkey_mprotect", "shmat",
                                       "socket"]})
    assert settings["ProtectProc"] == "invisible" and "ProcSubset" not in settings
    inner = (f"mount --make-rprivate / && {reach_interpreter()}"
             f"mount -t proc -o hidepid=invisible proc /proc && "
             f"mount --bind {writable} {writable} && "
             f"mount -o remount,bind,ro / && "
             f'exec "$@"')
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               "--inh-caps=-all", "--bounding-set=-all"]
    # every step execs the next: the returned command's process is the sandboxed one,
    # and a signal sent to it reaches the program
    return ["unshare", "--mount", "--", "sh", "-c", inner,
            "sandbox", *setpriv, sys.executable, "-c", LAUNCHER, spec, *argv]


def reach_interpreter() -> str:
    """Shell commands that let nobody reach this Python when it lives in a folder only
    root may enter (a pyenv under /root, as on the development machine; Debian's
    /usr/bin/python3 needs nothing): in the sandbox's own mount namespace, a tmpfs
    over that folder with the interpreter's tree mounted back into it."""
    prefix = Path(sys.base_prefix).resolve()
    for closed in reversed(prefix.parents[:-1]):
        if not closed.stat().st_mode & 0o001:
            break
    else:
        return ""
    inside = prefix.relative_to(closed)
    return (f"mount --bind {prefix} /mnt && mount -t tmpfs -o mode=0755 tmpfs {closed} && "
            f"mkdir -p {closed / inside} && mount --move /mnt {closed / inside} && ")


def owned_by_nobody(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, NOBODY, NOBODY)
    # its parents must let nobody through (pytest's tmp folders are 0700)
    for parent in folder.parents:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    return folder

