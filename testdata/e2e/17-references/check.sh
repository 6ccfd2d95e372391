# Sourced by hack/e2e-criu.sh after each restore ($rpid: the restored root
# task): every reference scenario.sh made must still reach its file on its
# mount. The tasks are found by their markers in the tree under $rpid, and
# each reference is checked through /proc/<pid>/ (fd targets, their mounts
# by fdinfo mnt_id, content, cwd, root, exe, maps, /proc/net/unix, fsnotify
# fdinfo lines) and used where it can be (a write through the fd, a
# connect(), an fsnotify event, a byte through the pty), through pidfd_getfd.
# Sets check_failed to the first failure. The checker is python3 (the
# container's holders need it too).
# shellcheck disable=SC2154 # rpid is the e2e script's
check_failed=$(python3 - "$rpid" <<'PY' 2>&1
import ctypes, os, select, socket, stat, subprocess, sys

rpid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)


class Fail(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise Fail(msg)


def tree(p):
    out = [p]
    for t in os.listdir(f"/proc/{p}/task"):
        try:
            kids = open(f"/proc/{p}/task/{t}/children").read().split()
        except OSError:
            continue
        for c in kids:
            out += tree(int(c))
    return out


def mountinfo(p):
    """mount id -> dict(parent, dev, root, mp, opts, tags, fstype, source)"""
    ms = {}
    for line in open(f"/proc/{p}/mountinfo"):
        f = line.split()
        sep = f.index("-")
        ms[int(f[0])] = dict(parent=int(f[1]), dev=f[2], root=f[3], mp=f[4], opts=f[5].split(","),
                             tags=f[6:sep], fstype=f[sep + 1], source=f[sep + 2])
    return ms


def by_mp(p, mp):
    found = [m for m in mountinfo(p).values() if m["mp"] == mp]
    expect(found, f"pid {p}: no mount at {mp} in its mountinfo")
    return found[-1]


def fdinfo(p, fd):
    return open(f"/proc/{p}/fdinfo/{fd}").read()


def fdmount(p, fd):
    mnt = int([l.split()[1] for l in fdinfo(p, fd).splitlines() if l.startswith("mnt_id:")][0])
    m = mountinfo(p).get(mnt)
    expect(m, f"pid {p} fd {fd}: its mnt_id {mnt} is not in its mountinfo")
    return m


def getfd(p, fd):
    pidfd = os.pidfd_open(p)
    try:
        r = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
        if r < 0:
            raise OSError(ctypes.get_errno(), f"pidfd_getfd {p} {fd}")
        return r
    finally:
        os.close(pidfd)


def drain(fd):
    while select.select([fd], [], [], 0)[0]:
        os.read(fd, 65536)


def file_fd(k, p, fd, link, mp, content, acc=os.O_RDONLY, ro=False):
    """fd of task k: its target, the mount it is on, its content."""
    got = os.readlink(f"/proc/{p}/fd/{fd}")
    expect(got == link, f"{k} (pid {p}) fd {fd} is {got!r}, expected {link!r}")
    m = fdmount(p, fd)
    expect(m["mp"] == mp, f"{k} (pid {p}) fd {fd} ({link}) is on the mount at {m['mp']} (root {m['root']}), expected {mp}")
    if ro:
        expect("ro" in m["opts"], f"{k} (pid {p}) fd {fd}: its mount {mp} is not read-only: {m['opts']}")
    flags = int([l.split()[1] for l in fdinfo(p, fd).splitlines() if l.startswith("flags:")][0], 8)
    expect(flags & os.O_ACCMODE == acc, f"{k} (pid {p}) fd {fd}: access mode {flags & os.O_ACCMODE}, expected {acc}")
    data = open(f"/proc/{p}/fd/{fd}").read()
    expect(data == content, f"{k} (pid {p}) fd {fd} ({link}) holds {data!r}, expected {content!r}")
    return flags


def check(tasks):
    def need(k):
        expect(k in tasks, f"no restored task {k} under {rpid} (found: {' '.join(sorted(tasks))})")
        return tasks[k]

    expect(os.path.exists(f"/proc/{rpid}/root/refs/ok"), "the scenario did not get to its end (no /refs/ok)")

    # Open fds: read, write-append, read-write, read-only bind, file bind.
    k, p = "refs-fd", need("refs-fd")
    file_fd(k, p, 3, "/mnt/fd-r/data", "/mnt/fd-r", "fd-r content\n")
    fl = file_fd(k, p, 4, "/mnt/fd-w/log", "/mnt/fd-w", "written before dump\n", os.O_WRONLY)
    expect(fl & os.O_APPEND, f"{k} (pid {p}) fd 4: O_APPEND lost (flags {fl:o})")
    file_fd(k, p, 5, "/mnt/fd-r/rw", "/mnt/fd-r", "rw content\n", os.O_RDWR)
    file_fd(k, p, 6, "/mnt/fd-ro/data", "/mnt/fd-ro", "fd-ro content\n", ro=True)
    file_fd(k, p, 7, "/mnt/filebind", "/mnt/filebind", "file bind content\n")
    fd = getfd(p, 4)
    os.write(fd, b"written after restore\n")
    os.close(fd)
    for path in ("/mnt/fd-w/log", "/tmp/shsrc/fdw/log"):
        data = open(f"/proc/{p}/root{path}").read()
        expect(data == "written before dump\nwritten after restore\n",
               f"{k} (pid {p}): after a write through fd 4, {path} holds {data!r}")

    # cwd in a bind.
    k, p = "refs-cwd", need("refs-cwd")
    got = os.readlink(f"/proc/{p}/cwd")
    expect(got == "/mnt/cwd/sub", f"{k} (pid {p}): cwd is {got!r}, expected /mnt/cwd/sub")
    data = open(f"/proc/{p}/cwd/marker").read()
    expect(data == "cwd marker\n", f"{k} (pid {p}): cwd's marker holds {data!r}")

    # A chroot in a bind.
    k, p = "refs-root", need("refs-root")
    for what in ("root", "cwd"):
        got = os.readlink(f"/proc/{p}/{what}")
        expect(got == "/mnt/root/jail", f"{k} (pid {p}): {what} is {got!r}, expected /mnt/root/jail")
    data = open(f"/proc/{p}/root/marker").read()
    expect(data == "jail marker\n", f"{k} (pid {p}): /marker in its root holds {data!r}")

    # exe on a tmpfs bind.
    k, p = "refs-exe", need("refs-exe")
    got = os.readlink(f"/proc/{p}/exe")
    expect(got == "/mnt/exe/bin/sleep", f"{k} (pid {p}): exe is {got!r}, expected /mnt/exe/bin/sleep")
    expect(open(f"/proc/{p}/exe", "rb").read() == open("/usr/bin/sleep", "rb").read(),
           f"{k} (pid {p}): its exe's content is not /usr/bin/sleep's")
    expect(any(l.split()[-1] == "/mnt/exe/bin/sleep" for l in open(f"/proc/{p}/maps") if len(l.split()) == 6),
           f"{k} (pid {p}): /mnt/exe/bin/sleep is not mapped")

    # File mappings, shared and private.
    k, p = "refs-mmap", need("refs-mmap")
    maps = [l.split() for l in open(f"/proc/{p}/maps")]
    for path, kind, content in (("/mnt/mmap/shared", "s", "mapped shared content\n"),
                                ("/mnt/mmap/private", "p", "mapped private content\n")):
        vm = [m for m in maps if len(m) == 6 and m[5] == path]
        expect(vm, f"{k} (pid {p}): {path} is not in its maps")
        expect(vm[0][1] == "r--" + kind, f"{k} (pid {p}): {path} is mapped {vm[0][1]}, expected r--{kind}")
        data = open(f"/proc/{p}/map_files/{vm[0][0]}").read()
        expect(data == content, f"{k} (pid {p}): the mapping of {path} holds {data!r}")
        expect(all(os.readlink(f"/proc/{p}/fd/{f}") != path for f in os.listdir(f"/proc/{p}/fd")),
               f"{k} (pid {p}): an fd is open on {path} (the mapping must be the only reference)")

    # Listening unix sockets: one bound in a slave bind, one on a mount of
    # the nested namespace.
    for k, path in (("refs-sock", "/mnt/sock/s.sock"), ("refs-nsock", "/tmp/private-in-child/s.sock")):
        p = need(k)
        ino = os.readlink(f"/proc/{p}/fd/3")
        expect(ino.startswith("socket:["), f"{k} (pid {p}): fd 3 is {ino!r}, not a socket")
        ino = ino[len("socket:["):-1]
        lines = [l.split() for l in open(f"/proc/{p}/net/unix")][1:]
        mine = [l for l in lines if l[6] == ino]
        expect(mine and len(mine[0]) == 8 and mine[0][7] == path,
               f"{k} (pid {p}): /proc/net/unix has for its socket (inode {ino}): {mine}, expected {path}")
        expect(int(mine[0][3], 16) & 0x10000, f"{k} (pid {p}): its socket is not listening: {mine[0]}")
        st = os.stat(f"/proc/{p}/root{path}")
        expect(stat.S_ISSOCK(st.st_mode), f"{k} (pid {p}): {path} is not a socket")
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            c.connect(f"/proc/{p}/root{path}")
        except OSError as e:
            raise Fail(f"{k} (pid {p}): connect to {path}: {e}")
        finally:
            c.close()
    expect(os.readlink(f"/proc/{p}/ns/mnt") != os.readlink(f"/proc/{rpid}/ns/mnt"), f"{k} (pid {p}): not in the nested namespace")

    # An inotify watch on a directory of a peer bind.
    k, p = "refs-inotify", need("refs-inotify")
    wds = [l for l in fdinfo(p, 3).splitlines() if l.startswith("inotify ")]
    want = os.stat(f"/proc/{p}/root/mnt/ino/dir").st_ino
    expect(len(wds) == 1 and f" ino:{want:x} " in wds[0],
           f"{k} (pid {p}): fdinfo's inotify lines are {wds}, expected one on inode {want:x} (/mnt/ino/dir)")
    fd = getfd(p, 3)
    try:
        drain(fd)
        probe = f"/proc/{p}/root/mnt/ino/dir/probe"
        open(probe, "w").close()
        os.unlink(probe)
        ok = select.select([fd], [], [], 2)[0] and b"probe" in os.read(fd, 65536)
        expect(ok, f"{k} (pid {p}): no inotify event for a file made in /mnt/ino/dir")
    finally:
        os.close(fd)

    # fanotify: a mount mark and an inode mark.
    k, p = "refs-fanotify", need("refs-fanotify")
    marks = [l for l in fdinfo(p, 3).splitlines() if l.startswith("fanotify ")]
    mm = [l for l in marks if l.startswith("fanotify mnt_id:")]
    expect(len(mm) == 1, f"{k} (pid {p}): fdinfo's fanotify mount marks are {mm}, expected one")
    mnt = int(mm[0].split()[1].split(":")[1], 16)
    m = mountinfo(p).get(mnt)
    expect(m and m["mp"] == "/mnt/fan", f"{k} (pid {p}): the fanotify mount mark is on mount {mnt} ({m and m['mp']}), expected /mnt/fan")
    want = os.stat(f"/proc/{p}/root/mnt/faninode/file").st_ino
    im = [l for l in marks if l.startswith("fanotify ino:")]
    expect(len(im) == 1 and im[0].startswith(f"fanotify ino:{want:x} "),
           f"{k} (pid {p}): fdinfo's fanotify inode marks are {im}, expected one on inode {want:x} (/mnt/faninode/file)")
    fd = getfd(p, 3)
    try:
        drain(fd)
        for path in ("/mnt/fan/probe", "/mnt/faninode/file"):
            os.close(os.open(f"/proc/{p}/root{path}", os.O_RDONLY | os.O_CREAT, 0o644))
            got = False
            while not got and select.select([fd], [], [], 2)[0]:
                buf = os.read(fd, 65536)
                while len(buf) >= 24:
                    ln = int.from_bytes(buf[0:4], "little")
                    efd = int.from_bytes(buf[16:20], "little", signed=True)
                    epid = int.from_bytes(buf[20:24], "little", signed=True)
                    if efd >= 0:
                        os.close(efd)
                    got = got or epid == os.getpid()
                    buf = buf[ln:]
            expect(got, f"{k} (pid {p}): no fanotify event for an open of {path}")
        os.unlink(f"/proc/{p}/root/mnt/fan/probe")
    finally:
        os.close(fd)

    # Ghost files, one through a read-only bind.
    k, p = "refs-ghost", need("refs-ghost")
    file_fd(k, p, 3, "/mnt/ghost/g (deleted)", "/mnt/ghost", "ghost content\n")
    file_fd(k, p, 4, "/mnt/ghost-ro/g (deleted)", "/mnt/ghost-ro", "ghost ro content\n", ro=True)
    for fd, path in ((3, "/mnt/ghost/g"), (4, "/mnt/ghost-ro/g")):
        n = os.stat(f"/proc/{p}/fd/{fd}").st_nlink
        expect(n == 0, f"{k} (pid {p}) fd {fd}: the ghost {path} has {n} links")
        expect(not os.path.lexists(f"/proc/{p}/root{path}"), f"{k} (pid {p}): the ghost {path} is linked again")

    # A cwd in a removed directory.
    k, p = "refs-cwdgone", need("refs-cwdgone")
    got = os.readlink(f"/proc/{p}/cwd")
    expect(got == "/mnt/cwdgone/d (deleted)", f"{k} (pid {p}): cwd is {got!r}, expected '/mnt/cwdgone/d (deleted)'")
    st = os.stat(f"/proc/{p}/cwd")
    expect(stat.S_ISDIR(st.st_mode) and st.st_nlink == 0, f"{k} (pid {p}): its cwd is no removed directory (mode {st.st_mode:o}, {st.st_nlink} links)")
    left = os.listdir(f"/proc/{p}/root/mnt/cwdgone")
    expect(not left, f"{k} (pid {p}): /mnt/cwdgone holds {left} after the restore, expected nothing")

    # A fifo with data in it.
    k, p = "refs-fifo", need("refs-fifo")
    got = os.readlink(f"/proc/{p}/fd/3")
    expect(got == "/mnt/fifo/p", f"{k} (pid {p}) fd 3 is {got!r}, expected /mnt/fifo/p")
    m = fdmount(p, 3)
    expect(m["mp"] == "/mnt/fifo", f"{k} (pid {p}) fd 3 (/mnt/fifo/p) is on the mount at {m['mp']}, expected /mnt/fifo")
    expect(stat.S_ISFIFO(os.stat(f"/proc/{p}/root/mnt/fifo/p").st_mode), f"{k} (pid {p}): /mnt/fifo/p is no fifo")
    fd = getfd(p, 3)
    try:
        data = os.read(fd, 100) if select.select([fd], [], [], 2)[0] else b""
        expect(data == b"fifo data\n", f"{k} (pid {p}): the fifo holds {data!r}, expected 'fifo data'")
    finally:
        os.close(fd)

    # /dev/console: pty 0 of the devpts newinstance at /dev/pts.
    # CRIU 4.2 in mount-v2 mode (alone too) reopens the master on a mount
    # that is not in the namespace (the fd reads "/ptmx", its mnt_id is in
    # no mountinfo): the master is checked by its superblock.
    k, p = "refs-ptmx", need("refs-ptmx")
    got = os.readlink(f"/proc/{p}/fd/3")
    expect(got in ("/dev/pts/ptmx", "/ptmx"), f"{k} (pid {p}) fd 3 is {got!r}, expected /dev/pts/ptmx")
    pts = by_mp(p, "/dev/pts")
    st = os.stat(f"/proc/{p}/fd/3")
    expect(pts["fstype"] == "devpts" and f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" == pts["dev"]
           and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (5, 2),
           f"{k} (pid {p}): fd 3 (dev {os.major(st.st_dev)}:{os.minor(st.st_dev)}, rdev {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}) "
           f"is not the ptmx of the devpts at /dev/pts ({pts})")
    expect("tty-index:\t0" in fdinfo(p, 3), f"{k} (pid {p}): the master is not pty 0: {fdinfo(p, 3)!r}")
    k, pc = "refs-console", need("refs-console")
    got = os.readlink(f"/proc/{pc}/fd/3")
    expect(got == "/dev/console", f"{k} (pid {pc}) fd 3 is {got!r}, expected /dev/console")
    m = fdmount(pc, 3)
    expect(m["mp"] == "/dev/console" and m["fstype"] == "devpts" and m["root"] == "/0" and m["dev"] == pts["dev"],
           f"{k} (pid {pc}): fd 3 is on {m}, expected the bind of /0 of the devpts at /dev/pts ({pts['dev']}) at /dev/console")
    rdev = os.stat(f"/proc/{pc}/fd/3").st_rdev
    expect((os.major(rdev), os.minor(rdev)) == (136, 0), f"{k} (pid {pc}): /dev/console is {os.major(rdev)}:{os.minor(rdev)}, expected 136:0")
    master, slave = getfd(p, 3), getfd(pc, 3)
    try:
        drain(slave)
        os.write(master, b"ping\n")
        ok = select.select([slave], [], [], 2)[0] and os.read(slave, 100) == b"ping\n"
        expect(ok, f"{k} (pid {pc}): a line written to the master (pid {p}) did not come out of /dev/console")
    finally:
        os.close(master)
        os.close(slave)

    # A mount covering a sibling: the file open on the covering one, the
    # covered one's file seen from a private clone of the namespace.
    k, p = "refs-cov", need("refs-cov")
    file_fd(k, p, 3, "/mnt/cov/top", "/mnt/cov", "covering content\n")
    top, under = by_mp(p, "/mnt/cov"), by_mp(p, "/mnt/cov/under")
    expect(under["parent"] == top["parent"] and under["root"] == "/cov-under",
           f"{k} (pid {p}): /mnt/cov/under is {under}, expected /cov-under of refsrc beside /mnt/cov")
    r = subprocess.run(["nsenter", "-t", str(p), "-m", "-p", "-r", "-w", "unshare", "-m", "--propagation", "private",
                        "sh", "-c", "umount -l /mnt/cov && cat /mnt/cov/under/file /mnt/cov/under/child/file"],
                       capture_output=True, text=True)
    expect(r.stdout == "covered content\ncovered child content\n",
           f"{k} (pid {p}): the covered /mnt/cov/under/file and /mnt/cov/under/child/file hold {r.stdout!r} ({r.stderr.strip()})")

    # A file on a bind under a bind under a tmpfs nobody references.
    k, p = "refs-deep", need("refs-deep")
    file_fd(k, p, 3, "/mnt/deep/a/b/f", "/mnt/deep/a/b", "deep content\n")

    # A file on a bind whose source is shown whole only in the nested
    # namespace.
    k, p = "refs-xbind", need("refs-xbind")
    file_fd(k, p, 3, "/mnt/xbind/f", "/mnt/xbind", "cross-namespace source\n")
    m = by_mp(p, "/mnt/xbind")
    expect(m["root"] == "/d", f"{k} (pid {p}): /mnt/xbind is {m}, expected the bind of /d of xsrc")

    # The nested namespace: its own mount, a propagated peer, a slave.
    k, p = "refs-nested", need("refs-nested")
    expect(os.readlink(f"/proc/{p}/ns/mnt") != os.readlink(f"/proc/{rpid}/ns/mnt"), f"{k} (pid {p}): not in a namespace of its own")
    file_fd(k, p, 3, "/tmp/private-in-child/f", "/tmp/private-in-child", "child only\n")
    file_fd(k, p, 4, "/tmp/shared/after/ready", "/tmp/shared/after", "propagated content\n")
    got = os.readlink(f"/proc/{p}/cwd")
    expect(got == "/tmp/slave/after", f"{k} (pid {p}): cwd is {got!r}, expected /tmp/slave/after")
    mine, ours = by_mp(p, "/tmp/shared/after"), by_mp(rpid, "/tmp/shared/after")
    sh = [t for t in mine["tags"] if t.startswith("shared:")]
    expect(sh and sh == [t for t in ours["tags"] if t.startswith("shared:")],
           f"{k} (pid {p}): its /tmp/shared/after ({mine['tags']}) is no peer of the root namespace's ({ours['tags']})")
    sl = by_mp(p, "/tmp/slave/after")
    expect("master:" + sh[0].split(":")[1] in sl["tags"], f"{k} (pid {p}): its /tmp/slave/after ({sl['tags']}) is no slave of {sh[0]}")


tasks = {}
for p in tree(rpid):
    try:
        argv = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
    except OSError:
        continue
    for a in argv[:3]:
        if a.startswith(b"refs-"):
            tasks.setdefault(a.decode(), p)
try:
    check(tasks)
except Fail as e:
    print(e)
    sys.exit(1)
except Exception as e:
    print(f"the checker failed: {e!r}")
    sys.exit(1)
PY
) || check_failed=${check_failed:-"the checker failed"}
