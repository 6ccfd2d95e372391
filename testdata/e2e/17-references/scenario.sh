# Every kind of reference CRIU restores through a mount, each on a bind
# mount of its own, for reduce mode (the hook keeps for CRIU exactly the
# mounts the images name, mntv2 makes the rest): open fds (read, write,
# read-write, on a read-only bind, on a file bind), a cwd, a chroot, an exe,
# file mappings, a listening unix socket, an inotify watch, fanotify mount
# and inode marks, ghost files (one opened through a read-only bind), a
# cwd in a removed directory, a fifo, a /dev/console bound from a devpts
# newinstance (as runc makes it), a mount that covers a sibling; and,
# referenced by nobody, many binds, shared and slave binds, a nested mount
# namespace whose mounts are peers of ours.
# Every process below stays alive until the dump; check.sh finds them by
# their markers (argv[0] refs-* of a sleep, or the holder's first argument).
#
# Left out: a file open on a covered mount itself. CRIU 4.2 refuses to dump
# it ("Open files on overmounted mounts are not supported yet",
# criu/files-reg.c:1796); the file open here is on the covering mount, and
# check.sh reads the covered one's file through a private clone. And a
# linked remap (a file unlinked on its bind, linked elsewhere): CRIU dumps
# it only with --link-remap, which hack/e2e-criu.sh does not pass.
set -euo pipefail

mkdir -p /refs /tmp/ready
# The holder of the references bash cannot make: python3 (from the host's
# /usr) with ctypes; each writes /tmp/ready/<kind> when done, then sleeps.
cat >/refs/holder.py <<'PY'
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
kind, arg = sys.argv[1], sys.argv[2:]

def check(r, what):
    if r == -1 or r is None:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))
    return r

keep = []
if kind == "refs-mmap":
    # A shared and a private mapping of files of a bind, with no fd left
    # (Python's mmap module would keep a dup of the fd: use libc's).
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    for path, flags in ((arg[0], 1), (arg[1], 2)):  # MAP_SHARED, MAP_PRIVATE
        fd = os.open(path, os.O_RDONLY)
        p = libc.mmap(None, os.fstat(fd).st_size, 1, flags, fd, 0)  # PROT_READ
        if p is None or p == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), "mmap " + path)
        os.close(fd)
elif kind == "refs-root":
    os.chroot(arg[0])
    os.chdir("/")
elif kind in ("refs-sock", "refs-nsock"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(arg[0])
    s.listen(8)
    keep.append(s)
elif kind == "refs-inotify":
    fd = check(libc.inotify_init1(0), "inotify_init1")
    check(libc.inotify_add_watch(fd, arg[0].encode(), 0x100 | 0x200), "inotify_add_watch")  # IN_CREATE|IN_DELETE
elif kind == "refs-fanotify":
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    fd = check(libc.fanotify_init(0, os.O_RDONLY), "fanotify_init")  # FAN_CLASS_NOTIF
    # FAN_MARK_ADD|FAN_MARK_MOUNT, FAN_OPEN on the mount of arg[0]
    check(libc.fanotify_mark(fd, 0x1 | 0x10, 0x20, -100, arg[0].encode()), "fanotify_mark mount")
    # FAN_MARK_ADD, FAN_OPEN|FAN_CLOSE_WRITE on the inode arg[1]
    check(libc.fanotify_mark(fd, 0x1, 0x20 | 0x8, -100, arg[1].encode()), "fanotify_mark inode")
elif kind == "refs-ptmx":
    # pty 0 of the devpts newinstance; unlocked, so its slave can be opened.
    fd = os.open(arg[0], os.O_RDWR | os.O_NOCTTY)
    import fcntl, struct
    fcntl.ioctl(fd, 0x40045431, struct.pack("i", 0))  # TIOCSPTLCK
else:
    raise SystemExit("holder: unknown kind " + kind)
# (the chrooted one writes /ready in its jail)
open("/ready" if kind == "refs-root" else "/tmp/ready/" + kind, "w").close()
while True:
    time.sleep(1000000)
PY

# bg CMD...: a holder in the background, its stdio on /dev/null.
bg() { "$@" </dev/null >/dev/null 2>&1 & }
# ready FILE: wait until FILE exists (a holder is set up).
ready() {
	local _
	for _ in $(seq 400); do [ -e "$1" ] && return 0; sleep 0.025; done
	echo "scenario: $1 never appeared" >&2
	return 1
}

# The sources: a private tmpfs and a shared one, a directory of each per
# bind.
mkdir -p /tmp/src /tmp/shsrc
mount -t tmpfs refsrc /tmp/src
mount -t tmpfs refshared /tmp/shsrc
mount --make-shared /tmp/shsrc
(cd /tmp/src && mkdir -p fd-r fd-ro fb cwd/sub root/jail exe/bin mmap ghost gro fan faninode cov-under cwdgone fifo)
(cd /tmp/shsrc && mkdir -p fdw sock ino/dir)
# bnd SRC DST: a bind of directory SRC at /mnt/DST.
bnd() { mkdir -p "/mnt/$2" && mount --bind "$1" "/mnt/$2"; }

# Open fds: read (private bind), write-append (a peer of the shared
# source), read-write, read on a read-only bind, read on a file bind.
echo "fd-r content" >/tmp/src/fd-r/data
echo "fd-ro content" >/tmp/src/fd-ro/data
echo "file bind content" >/tmp/src/fb/file
echo "rw content" >/tmp/src/fd-r/rw
bnd /tmp/src/fd-r fd-r
bnd /tmp/shsrc/fdw fd-w
bnd /tmp/src/fd-ro fd-ro
mount -o remount,bind,ro /mnt/fd-ro
touch /mnt/filebind
mount --bind /tmp/src/fb/file /mnt/filebind
(
	exec 3</mnt/fd-r/data 4>>/mnt/fd-w/log 5<>/mnt/fd-r/rw 6</mnt/fd-ro/data 7</mnt/filebind
	echo "written before dump" >&4
	exec -a refs-fd sleep 1000000
) </dev/null >/dev/null 2>&1 &

# cwd inside a bind made shared (a group of its own).
echo "cwd marker" >/tmp/src/cwd/sub/marker
bnd /tmp/src/cwd cwd
mount --make-shared /mnt/cwd
bg bash -c 'cd /mnt/cwd/sub && exec -a refs-cwd sleep 1000000'

# A chroot into a bind.
echo "jail marker" >/tmp/src/root/jail/marker
bnd /tmp/src/root root
bg python3 /refs/holder.py refs-root /mnt/root/jail

# The exe: sleep copied into a tmpfs bind and run from there.
bnd /tmp/src/exe exe
cp /usr/bin/sleep /mnt/exe/bin/sleep
bg bash -c 'exec -a refs-exe /mnt/exe/bin/sleep 1000000'

# File mappings, shared and private, of files of a bind.
bnd /tmp/src/mmap mmap
printf 'mapped shared content\n' >/mnt/mmap/shared
printf 'mapped private content\n' >/mnt/mmap/private
bg python3 /refs/holder.py refs-mmap /mnt/mmap/shared /mnt/mmap/private

# A listening unix socket bound in a slave bind of the shared source.
bnd /tmp/shsrc/sock sock
mount --make-slave /mnt/sock
bg python3 /refs/holder.py refs-sock /mnt/sock/s.sock

# An inotify watch on a directory of a peer bind of the shared source.
bnd /tmp/shsrc/ino ino
bg python3 /refs/holder.py refs-inotify /mnt/ino/dir

# fanotify: a mount mark on one bind, an inode mark on a file of another.
bnd /tmp/src/fan fan
bnd /tmp/src/faninode faninode
echo "fanotify inode" >/mnt/faninode/file
bg python3 /refs/holder.py refs-fanotify /mnt/fan /mnt/faninode/file

# Ghost files: one unlinked on its bind, one opened through a read-only
# bind and unlinked through its source.
bnd /tmp/src/ghost ghost
bnd /tmp/src/gro ghost-ro
mount -o remount,bind,ro /mnt/ghost-ro
echo "ghost content" >/mnt/ghost/g
echo "ghost ro content" >/tmp/src/gro/g
(
	exec 3</mnt/ghost/g 4</mnt/ghost-ro/g
	rm /mnt/ghost/g /tmp/src/gro/g
	exec -a refs-ghost sleep 1000000
) </dev/null >/dev/null 2>&1 &

# A cwd in a directory of a bind that was removed (a ghost directory).
bnd /tmp/src/cwdgone cwdgone
mkdir /mnt/cwdgone/d
bg bash -c 'cd /mnt/cwdgone/d && rmdir /mnt/cwdgone/d && exec -a refs-cwdgone sleep 1000000'

# A fifo in a bind, open read-write with data in it.
bnd /tmp/src/fifo fifo
mkfifo /mnt/fifo/p
(
	exec 3<>/mnt/fifo/p
	echo "fifo data" >&3
	exec -a refs-fifo sleep 1000000
) </dev/null >/dev/null 2>&1 &

# /dev/console as runc makes it: a devpts newinstance on /dev/pts, pty 0's
# master held by one process, /dev/pts/0 bound over /dev/console, which
# another process has open.
mkdir -p /dev/pts
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
bg python3 /refs/holder.py refs-ptmx /dev/pts/ptmx
ready /tmp/ready/refs-ptmx
touch /dev/console
mount --bind /dev/pts/0 /dev/console
bg bash -c 'exec 3<>/dev/console; exec -a refs-console sleep 1000000'

# A mount covering a sibling: a bind at /mnt/cov/under (with a tmpfs of
# its own below), then a tmpfs at /mnt/cov over it; a file is open on the
# covering tmpfs.
echo "covered content" >/tmp/src/cov-under/file
mkdir -p /mnt/cov/under
mount --bind /tmp/src/cov-under /mnt/cov/under
mkdir -p /mnt/cov/under/child
mount -t tmpfs covered-child /mnt/cov/under/child
echo "covered child content" >/mnt/cov/under/child/file
mount -t tmpfs covering /mnt/cov
echo "covering content" >/mnt/cov/top
bg bash -c 'exec 3</mnt/cov/top; exec -a refs-cov sleep 1000000'

# A file open on a bind of the shared source, on a bind of the private
# one, on a tmpfs nobody references.
mkdir -p /mnt/deep /tmp/src/deep-a /tmp/shsrc/deep-b
mount -t tmpfs deep /mnt/deep
mkdir -p /mnt/deep/a
mount --bind /tmp/src/deep-a /mnt/deep/a
mkdir -p /mnt/deep/a/b
mount --bind /tmp/shsrc/deep-b /mnt/deep/a/b
echo "deep content" >/mnt/deep/a/b/f
bg bash -c 'exec 3</mnt/deep/a/b/f; exec -a refs-deep sleep 1000000'

# Binds nobody references: plain, read-only, shared and slave ones, a
# tree of binds and a recursive bind of it, and a mount propagated into the
# shared source's peers after they were bound.
mkdir -p /tmp/src/u
for i in $(seq 1 24); do
	mkdir -p "/tmp/src/u/$i"
	bnd "/tmp/src/u/$i" "u/$i"
done
mount -o remount,bind,ro /mnt/u/3
mount --make-shared /mnt/u/4
bnd /mnt/u/4 u-peer
mount --make-slave /mnt/u-peer
mount --make-shared /mnt/u-peer
mkdir -p /mnt/utree
mount -t tmpfs utree /mnt/utree
mkdir -p /mnt/utree/a /mnt/utree/b /mnt/u-rbind
mount --bind /tmp/src/u/5 /mnt/utree/a
mount --bind /tmp/src/u/6 /mnt/utree/b
mount --rbind /mnt/utree /mnt/u-rbind
mkdir -p /tmp/shsrc/ino/sub
mount -t tmpfs propagated-ino /tmp/shsrc/ino/sub

# A nested mount namespace whose /tmp/shared is a peer of ours: its
# process has a file open on a mount of its own, another on a mount
# propagated from ours after it was made, and its cwd in a slave of that.
mkdir -p /tmp/shared /tmp/slave
mount -t tmpfs shr /tmp/shared
mount --make-shared /tmp/shared
mount --bind /tmp/shared /tmp/slave
mount --make-slave /tmp/slave
# It also holds the only mount that shows a whole tmpfs (xsrc) of which
# ours keeps just a bind (/mnt/xbind, with a file open on it), and a unix
# socket listening on its own mount.
mkdir -p /tmp/shared/after /tmp/private-in-child /tmp/xsrc
mount -t tmpfs xsrc /tmp/xsrc
mkdir /tmp/xsrc/d
echo "cross-namespace source" >/tmp/xsrc/d/f
bg unshare -m --propagation unchanged bash -c '
	mount -t tmpfs childonly /tmp/private-in-child
	echo "child only" >/tmp/private-in-child/f
	python3 /refs/holder.py refs-nsock /tmp/private-in-child/s.sock </dev/null >/dev/null 2>&1 &
	touch /tmp/ready/nested-ns
	until [ -e /tmp/shared/after/ready ]; do sleep 0.02; done
	exec 3</tmp/private-in-child/f 4</tmp/shared/after/ready
	cd /tmp/slave/after
	exec -a refs-nested sleep 1000000'
ready /tmp/ready/nested-ns
bnd /tmp/xsrc/d xbind
umount /tmp/xsrc
bg bash -c 'exec 3</mnt/xbind/f; exec -a refs-xbind sleep 1000000'
mount -t tmpfs propagated /tmp/shared/after
echo "propagated content" >/tmp/shared/after/ready

# Wait until every holder is set up: the python ones say so, the others
# have exec'd their marked sleep (and so made their references).
for k in refs-mmap refs-sock refs-inotify refs-fanotify refs-nsock; do ready "/tmp/ready/$k"; done
ready /mnt/root/jail/ready
for k in refs-fd refs-cwd refs-exe refs-ghost refs-cwdgone refs-fifo refs-console refs-cov refs-deep refs-xbind refs-nested; do
	for _ in $(seq 400); do
		grep -qsxz -- "$k" /proc/[0-9]*/cmdline && break
		sleep 0.025
	done
	grep -qsxz -- "$k" /proc/[0-9]*/cmdline || { echo "scenario: no process $k" >&2; exit 1; }
done
# check.sh's sign that the scenario got to its end.
touch /refs/ok
