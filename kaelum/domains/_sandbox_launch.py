"""Sandbox launcher: isolates itself, then becomes the sandboxed interpreter.

Run by `kaelum.domains.sandbox` as `python -I -S -B _sandbox_launch.py <config>`, with the
parent's privileges (the config is `marshal` data in hex, written by the parent: unlike `json`,
reading it imports nothing, and this runs twice for every verification). It is a standalone
script (stdlib only, no kaelum import) because it runs between fork and the untrusted code, where
nothing heavy should be loaded.

Steps, each recorded in a small JSON report written to the file named by `report` so the parent
knows which protections really applied (a container or an AppArmor policy may refuse namespaces):

1. new mount, network, PID, IPC and UTS namespaces. As root directly; as any other user inside a
   new user namespace that maps only the caller's own uid and gid (unprivileged user namespaces),
   which grants the capabilities to set up the others within it and nothing outside it. The child
   sees only a loopback interface that is down and cannot signal or read host processes;
2. every mount is remounted read-only except the work directory. Directories the code must not
   see are hidden behind a tmpfs into which only the trees it needs are bound back (read-only):
   ancestors the unprivileged uid could not traverse (e.g. a Python installed under /root) when
   running as root, the caller's home directory (keys, tokens, dotfiles) when not, and always
   the shared scratch places (/tmp, /var/tmp, /run, /dev/shm: other programs' unix sockets, and
   the other sandbox's directory). The work directory itself becomes a tmpfs of bounded size
   holding the files the parent put there (RLIMIT_FSIZE caps each file, the tmpfs their total);
3. without the kernel layer (namespaces refused, or off) the code is not started unless the
   config allows audit-only runs; then the interpreter is told `strict`, and its audit hook also
   refuses exec, ctypes, unix sockets and signals to other processes;
4. fork: the child becomes PID 1 of the new PID namespace (when it dies the kernel kills every
   process the code started) and mounts a fresh /proc (or, where the kernel refuses that, hides
   the host's); its own child applies the resource limits, drops to an unprivileged uid/gid (as
   root) or loses the namespace's capabilities at exec (as a user: its uid is not 0 in the
   namespace), sets no_new_privs, asks for SIGKILL if its parent dies, and execs the interpreter on
   the harness. Mounts set up in a user namespace are locked for any namespace the code creates
   from inside, so it cannot make them writable again;
5. the launcher waits and exits with the child's status (128+signal when it was killed).
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import stat

import _signal as signal  # the C module: `signal` imports enum, a cost on every sandbox start
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _err() -> str:
    return os.strerror(ctypes.get_errno())


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731 - tiny local adapter
    if _libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}: {_err()}")


def _traversable_by_others(path: str) -> bool:
    """Whether a uid that owns nothing here can reach `path` (x on every ancestor, r+x on it)."""
    parts = os.path.abspath(path).split("/")
    for i in range(2, len(parts) + 1):
        p = "/".join(parts[:i]) or "/"
        try:
            mode = os.stat(p).st_mode
        except OSError:
            return False
        need = stat.S_IXOTH | (stat.S_IROTH if i == len(parts) and stat.S_ISDIR(mode) else 0)
        if mode & need != need:
            return False
    return True


def _blocking_ancestor(path: str) -> str | None:
    """The top-most ancestor of `path` that others cannot traverse, if any."""
    parts = os.path.abspath(path).split("/")
    for i in range(2, len(parts) + 1):
        p = "/".join(parts[:i])
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return p
    return None


def _is_within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _hide(tops: list[str], keep: list[str], report: dict) -> None:
    """Cover each of `tops` with an empty tmpfs, then bind back the `keep` paths that lie under it."""
    tops = [t for t in dict.fromkeys(tops) if not any(o != t and _is_within(t, o) for o in tops)]
    for top in tops:
        inside = [p for p in dict.fromkeys(keep) if _is_within(p, top) and p != top and os.path.exists(p)]
        # Open the trees before the tmpfs covers them; bind from the fds afterwards.
        fds = {p: os.open(p, os.O_PATH) for p in inside}
        _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for p, fd in fds.items():
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(p, mode=0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(p), mode=0o755, exist_ok=True)
                open(p, "a").close()  # a file bind mount needs a file to cover
            _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
            os.close(fd)
        report.setdefault("hidden", []).append(top)


def _expose(needed: list[str], report: dict) -> None:
    """Hide untraversable ancestors behind a tmpfs and bind the needed trees back (read-only later)."""
    tops = [top for path in needed if os.path.isdir(path) and (top := _blocking_ancestor(path)) is not None]
    _hide(tops, needed, report)


def _remount_readonly(keep_writable: str, report: dict) -> None:
    """Every mount becomes read-only except the work directory (its own bind mount)."""
    mountpoints = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            mountpoints.append(mp)
    failed = []
    for mp in mountpoints:
        if mp == keep_writable or mp.startswith("/proc") or mp.startswith("/sys"):
            # /proc is replaced in the child; /sys is read-only to a non-root uid anyway.
            continue
        try:
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY
            # Locked flags must be kept or the kernel refuses the remount.
            f_flag = os.statvfs(mp).f_flag
            flags |= (MS_NOSUID if f_flag & os.ST_NOSUID else 0) | (MS_NODEV if f_flag & os.ST_NODEV else 0)
            flags |= MS_NOEXEC if f_flag & os.ST_NOEXEC else 0
            _mount(None, mp, None, flags)
        except OSError as e:
            failed.append(f"{mp}: {e}")
    report["readonly_fs"] = not failed
    if failed:
        report["readonly_failures"] = failed[:5]


def _decide_uid_drop(cfg: dict, report: dict, is_root: bool) -> None:
    """As root: run as the per-run uid when it can reach the interpreter (once hidden ancestors were bound back)."""
    report["uid_drop_decided"] = True
    if is_root and cfg.get("uid") is not None:
        reachable = all(_traversable_by_others(p) for p in cfg["needed_paths"] + [cfg["argv"][0]])
        report["uid_drop"] = reachable
        if not reachable:
            report["uid_drop_error"] = "the interpreter is not readable by an unprivileged uid"


def _real_dirs(paths: list[str]) -> list[str]:
    """Existing directories among `paths`, links resolved (/var/run is usually a link to /run), deduplicated."""
    return list(dict.fromkeys(os.path.realpath(p) for p in paths if os.path.isdir(p)))


def _sized_workdir(cfg: dict, report: dict) -> None:
    """Replace the work directory by a tmpfs of bounded size and inode count holding the same files.

    RLIMIT_FSIZE caps each file, not their total; the tmpfs caps the total. Where the kernel
    refuses the mount, the host directory stays (reported as `work_dir_limit: none`).
    """
    workdir, size = cfg["workdir"], cfg.get("work_dir_bytes")
    if not size:
        return
    files = {}
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                files[name] = f.read()
    owner = ""
    if report.get("uid_drop"):
        owner = f",uid={cfg['uid']},gid={cfg['gid']}"
    try:
        _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={int(size)},nr_inodes={int(cfg.get('work_dir_inodes', 4096))},mode=0700{owner}")
    except OSError as e:
        report["work_dir_limit"] = f"none ({e})"
        return
    for name, data in files.items():
        fd = os.open(os.path.join(workdir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            if report.get("uid_drop"):
                os.fchown(fd, cfg["uid"], cfg["gid"])
        finally:
            os.close(fd)
    report["work_dir_limit"] = f"tmpfs {int(size) // 2**20} MiB"


def _set_limits(cfg: dict) -> None:
    def lim(res: int, soft: int, hard: int | None = None) -> None:
        resource.setrlimit(res, (soft, soft if hard is None else hard))

    # CPU: SIGXCPU at the soft limit, SIGKILL one second later.
    lim(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
    lim(resource.RLIMIT_AS, cfg["memory_bytes"])
    lim(resource.RLIMIT_FSIZE, cfg["file_size_bytes"])
    lim(resource.RLIMIT_NPROC, cfg["nproc"])
    lim(resource.RLIMIT_NOFILE, 256)
    lim(resource.RLIMIT_CORE, 0)


def _close_other_fds(keep: list[int]) -> None:
    """Close every descriptor above stderr except `keep` (the run's pipes): the report file, above all."""
    low = 3
    for fd in sorted(set(keep)) + [1 << 20]:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1


def _exec_child(cfg: dict, report: dict) -> None:
    """Apply limits, drop privileges and become the sandboxed interpreter. Never returns.

    With `boot` in the config this interpreter runs the harness itself, in this process, instead
    of exec'ing a fresh one: it already is `python -I -S -B`, and a start saved is ~15 ms of CPU
    for each of the two sandboxes of every verification.
    """
    try:
        os.chdir(cfg["workdir"])
        _close_other_fds(cfg.get("keep_fds", []))
        _set_limits(cfg)
        uid, gid = cfg.get("uid"), cfg.get("gid")
        if uid is not None and report.get("uid_drop"):
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        # Set after setuid: a credential change clears the parent-death signal.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # No set-uid or file-capability binary can give the code back what it was denied.
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if cfg.get("boot") is None:
            os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
        os.environ.clear()
        os.environ.update(cfg["env"])
        sys.argv = ["-c", *cfg["argv"][cfg["argv"].index("-c") + 2:]]  # what `python -c boot ...` would see
        boot = compile(cfg["boot"], "<sandbox>", "exec")
    except BaseException as e:  # noqa: BLE001 - report anything, then die without running user code
        os.write(2, f"kaelum sandbox launcher: {e!r}\n".encode())
        os._exit(125)
    _run_boot(boot)


def _run_boot(boot) -> None:  # noqa: ANN001 - a code object
    """Run the harness as a script's main module would run, then exit like the interpreter."""
    status = 0
    try:
        exec(boot, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102 - the harness
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback to stderr, status 1
        import traceback

        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _exit_like(status: int) -> None:
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


def _to_json(value: object) -> str:
    """JSON for the report's plain values (bool, int, str, None, lists, dicts), without importing json."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(_to_json(str(k)) + ":" + _to_json(v) for k, v in value.items()) + "}"
    return '"' + "".join(c if c >= " " and c not in '"\\' else "\\u%04x" % ord(c) for c in str(value)) + '"'


def _write_report(report_file, report: dict) -> None:
    with report_file:
        report_file.write(_to_json(report))


def _mount_proc(report: dict) -> str:
    """A /proc for this PID namespace; what was done: fresh, hidden or host."""
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return "fresh"
    except OSError:
        pass
    if report.get("uid_drop"):
        return "host"  # the uid drop keeps other processes' environment and memory unreadable
    # Same uid as the caller: the host /proc would show its environment (secrets) and memory, so
    # cover it. (A kernel refuses a fresh proc mount in a user namespace when parts of the host's
    # /proc are masked, as container runtimes do.)
    try:
        _mount("tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0555,size=4k")
        return "hidden"
    except OSError:
        return "host"


def _namespace_init(cfg: dict, report: dict, proc_w: int) -> None:
    """PID 1 of the new PID namespace: run the code as its child, reap orphans, exit with its status.

    The code is not PID 1 itself because the kernel drops signals to an init that has no handler
    (SIGXCPU, SIGXFSZ), which would weaken the limits. When this process exits, the kernel kills
    every process left in the namespace, which is what contains a fork bomb.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.write(proc_w, _mount_proc(report).encode())
    os.close(proc_w)
    child = os.fork()
    if child == 0:
        _exec_child(cfg, report)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            _exit_like(status)


def _enter_user_namespace(flags: int, report: dict) -> bool:
    """As a non-root user: a new user namespace mapping only our own uid/gid, with `flags` inside it."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | flags) != 0:
        report["namespace_error"] = f"user namespace: {_err()}"
        return False
    try:
        # setgroups must be denied before an unprivileged process may write its gid_map.
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError as e:
        report["namespace_error"] = f"user namespace id maps: {e}"
    report["userns"] = True
    return True


def main() -> None:
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    os.umask(0o022)
    report: dict = {"netns": False, "pidns": False, "mountns": False, "readonly_fs": False, "uid_drop": False,
                    "userns": False}
    is_root = os.geteuid() == 0
    # Opened before the file system turns read-only.
    report_file = open(cfg["report"], "w")
    if cfg.get("namespaces", True):
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        if is_root and _libc.unshare(flags) == 0 or not is_root and _enter_user_namespace(flags, report):
            report.update(netns=True, pidns=True, mountns=True)
        elif is_root and _libc.unshare(CLONE_NEWNET) == 0:
            report["netns"] = True
        elif is_root:
            report["namespace_error"] = _err()
    if report["mountns"]:
        try:
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            _mount(cfg["workdir"], cfg["workdir"], None, MS_BIND)
            _expose(cfg["needed_paths"], report)
            _decide_uid_drop(cfg, report, is_root)
            keep = cfg["needed_paths"] + [cfg["workdir"]]
            # Shared scratch places hold other programs' unix sockets (a network namespace does not
            # cover filesystem sockets), files and, here, the grader's directory: covered, with only
            # the work directory (and an interpreter living there) bound back.
            scratch = [d for d in _real_dirs(cfg.get("hide_always", [])) if d != "/"]
            _hide(scratch, keep, report)
            if not is_root:
                # The code runs as the caller's own uid here, so file permissions do not keep it
                # out of the caller's home directory; hiding it does. (A home that holds the
                # interpreter's tree itself, e.g. / as home, cannot be hidden.)
                homes = [h for h in _real_dirs(cfg.get("hide_dirs", [])) if h != "/"
                         and not any(_is_within(h, p) for p in cfg["needed_paths"])]
                _hide(homes, keep, report)
            _sized_workdir(cfg, report)
            _remount_readonly(cfg["workdir"], report)
        except OSError as e:
            report["mount_error"] = str(e)
    if "uid_drop_decided" not in report:
        _decide_uid_drop(cfg, report, is_root)
    report.pop("uid_drop_decided", None)
    if report["userns"]:
        # The namespace's count of our processes starts near zero, so the budget alone applies.
        cfg["nproc"] = cfg.get("nproc_in_userns", cfg["nproc"])
    report["kernel_layer"] = all(report.get(k) for k in ("netns", "pidns", "mountns", "readonly_fs"))
    if not report["kernel_layer"]:
        if not cfg.get("allow_audit_only"):
            report["refused"] = ("the kernel refused the sandbox's namespaces (" + str(
                report.get("namespace_error") or report.get("mount_error") or "namespaces off")
                + "): untrusted code would run as this user with only an in-process audit hook, which native "
                "code can get around; set the sandbox option allow_audit_only=true to run it anyway")
            _write_report(report_file, report)
            os._exit(126)
        cfg["argv"] = cfg["argv"] + ["strict"]  # the hook also refuses exec, ctypes and unix sockets
    if not report["pidns"]:
        _write_report(report_file, report)
        _exec_child(cfg, report)
    # The namespace's init mounts its /proc and says through a pipe how that went; the report is
    # written once that is known.
    proc_r, proc_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(proc_r)
        _namespace_init(cfg, report, proc_w)
    os.close(proc_w)
    report["proc"] = os.read(proc_r, 64).decode() or "unknown"
    os.close(proc_r)
    _write_report(report_file, report)
    # Forward termination to the namespace's init; SIGKILL of the launcher reaches it via PDEATHSIG.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: os.kill(pid, signal.SIGKILL))
    _, status = os.waitpid(pid, 0)
    _exit_like(status)


if __name__ == "__main__":
    main()
