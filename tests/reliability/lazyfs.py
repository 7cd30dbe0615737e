"""A FUSE filesystem that forgets everything not fsynced, as a power cut does.

Like Jepsen's LazyFS, for the power-loss tests. The mounted tree lives in the
memory of the filesystem process (that memory is the "page cache"); a backing
folder holds only what was made durable:

- ``fsync``/``fdatasync`` of a file writes that file's data and size to
  ``BACKING/data/<inode>`` (dirty 4 KiB pages only);
- ``fsync`` of a directory writes that directory's entries (name -> inode) to
  ``BACKING/meta.json``, nothing else: a new file, a rename, an unlink or a
  new subdirectory is durable only once its parent directory is fsynced, and
  a file's data only once the file is fsynced (a file whose entry is durable
  but whose data never was comes back empty).

A power cut is ``SIGKILL`` of the filesystem process (:meth:`LazyFS.crash`):
its memory is gone, so is every unfsynced write, truncate, fallocate, create,
rename, unlink and mkdir. Mounting again over the same backing folder shows
exactly the durable state. There is no write-back at unmount either: an
unmount loses what was not fsynced, like a crash.

While "powered", reads see every write (fsynced or not), as the page cache
does. One thread serves every request (``-s``), so there is no locking.

Run: ``python tests/reliability/lazyfs.py MOUNT BACKING`` (as root, with
``/dev/fuse`` and libfuse 3 from the Debian package ``fuse3``); it prints
``ready`` once mounted. Tests use :class:`LazyFS`, which starts it, crashes
it and always unmounts it within fixed time bounds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

PAGE = 4096
ROOT_INO = 1
META = "meta.json"
DATA = "data"

MOUNT_TIMEOUT = 15.0
UNMOUNT_TIMEOUT = 10.0

# fallocate(2) modes
_KEEP_SIZE = 0x01
_PUNCH_HOLE = 0x02
_ZERO_RANGE = 0x10
# renameat2(2) flags
_NOREPLACE = 0x1
_EXCHANGE = 0x2


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class _Node:
    """One inode as the running system sees it (durable or not)."""

    __slots__ = (
        "atime",
        "ctime",
        "data",
        "dirty",
        "entries",
        "floor",
        "ino",
        "is_dir",
        "mode",
        "mtime",
        "nlink",
        "opened",
    )

    def __init__(self, ino: int, is_dir: bool, mode: int) -> None:
        now = time.time_ns()
        self.ino = ino
        self.is_dir = is_dir
        self.mode = mode & 0o7777
        self.data = bytearray()
        self.entries: dict[str, int] = {}
        self.nlink = 2 if is_dir else 0
        self.opened = 0
        self.atime = self.mtime = self.ctime = now
        # Pages written since the last fsync, and the smallest size since then
        # (a shrink followed by a growth must not resurrect old bytes).
        self.dirty: set[int] = set()
        self.floor = 0

    def touch(self) -> None:
        self.mtime = self.ctime = time.time_ns()


class LazyOperations:
    """The filesystem: an in-memory tree over a backing folder of durable state."""

    use_ns = True

    def __init__(self, backing: Path) -> None:
        self._backing = backing
        self._data_dir = backing / DATA
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._nodes: dict[int, _Node] = {}
        # Durable directory entries and modes, as in BACKING/meta.json.
        self._durable: dict[int, dict[str, Any]] = {}
        # Inodes with a file in BACKING/data.
        self._backed: set[int] = set()
        self._handles: dict[int, tuple[int, int]] = {}  # fh -> (inode, open flags)
        self._next_fh = 1
        self._load()

    # -- durable state ------------------------------------------------------

    def _load(self) -> None:
        meta_path = self._backing / META
        nodes: dict[int, dict[str, Any]] = {}
        if meta_path.exists():
            raw = json.loads(meta_path.read_text())
            nodes = {int(k): v for k, v in raw["nodes"].items()}
        nodes.setdefault(ROOT_INO, {"dir": True, "mode": 0o755, "entries": {}})
        # Only what the root reaches through durable entries exists.
        reachable: list[int] = []
        todo = [ROOT_INO]
        while todo:
            ino = todo.pop()
            if ino in reachable or ino not in nodes:
                continue
            reachable.append(ino)
            if nodes[ino]["dir"]:
                todo.extend(nodes[ino]["entries"].values())
        for ino in reachable:
            record = nodes[ino]
            node = _Node(ino, record["dir"], record["mode"])
            if node.is_dir:
                node.entries = {
                    name: child for name, child in record["entries"].items() if child in nodes
                }
            else:
                path = self._data_dir / str(ino)
                if path.exists():
                    node.data = bytearray(path.read_bytes())
                    self._backed.add(ino)
                node.floor = len(node.data)
            self._nodes[ino] = node
            self._durable[ino] = {
                "dir": node.is_dir,
                "mode": node.mode,
                "entries": dict(node.entries),
            }
        for node in list(self._nodes.values()):
            for child in node.entries.values():
                if self._nodes[child].is_dir:
                    node.nlink += 1
                else:
                    self._nodes[child].nlink += 1
        # Forget data files no durable entry reaches (fsynced, never linked).
        for path in self._data_dir.iterdir():
            if not path.name.isdigit() or int(path.name) not in self._nodes:
                path.unlink()
        self._next_ino = max(self._nodes) + 1
        self._write_meta()

    def _write_meta(self) -> None:
        # Atomic against a kill of this process (the host itself never crashes
        # in these tests, so the backing folder needs no fsync of its own).
        tmp = self._backing / (META + ".tmp")
        tmp.write_text(json.dumps({"nodes": {str(k): v for k, v in self._durable.items()}}))
        os.replace(tmp, self._backing / META)

    def _sync_file(self, node: _Node) -> None:
        fd = os.open(self._data_dir / str(node.ino), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = len(node.data)
            os.ftruncate(fd, min(node.floor, size))
            os.ftruncate(fd, size)
            view = memoryview(node.data)
            for page in sorted(node.dirty):
                start = page * PAGE
                if start < size:
                    os.pwrite(fd, view[start : start + PAGE], start)
            view.release()
        finally:
            os.close(fd)
        node.dirty.clear()
        node.floor = len(node.data)
        self._backed.add(node.ino)
        record = self._durable.get(node.ino)
        if record is not None and record["mode"] != node.mode:
            record["mode"] = node.mode
            self._write_meta()

    def _sync_dir(self, node: _Node) -> None:
        record = self._durable.setdefault(node.ino, {"dir": True, "mode": node.mode, "entries": {}})
        record["mode"] = node.mode
        record["entries"] = dict(node.entries)
        for child_ino in node.entries.values():
            if child_ino in self._durable:
                continue
            child = self._nodes[child_ino]
            self._durable[child_ino] = {"dir": child.is_dir, "mode": child.mode, "entries": {}}
            if not child.is_dir and child_ino not in self._backed:
                # The inode is durable, its data is not: it comes back empty.
                (self._data_dir / str(child_ino)).touch()
                self._backed.add(child_ino)
        self._write_meta()

    # -- the tree -----------------------------------------------------------

    def _lookup(self, path: str) -> _Node:
        node = self._nodes[ROOT_INO]
        for part in path.split("/"):
            if not part:
                continue
            if not node.is_dir:
                raise _oserror(errno.ENOTDIR)
            child = node.entries.get(part)
            if child is None:
                raise _oserror(errno.ENOENT)
            node = self._nodes[child]
        return node

    def _split(self, path: str) -> tuple[_Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head)
        if not parent.is_dir:
            raise _oserror(errno.ENOTDIR)
        if not name or name in (".", ".."):
            raise _oserror(errno.EINVAL)
        if len(name.encode("utf-8", "surrogateescape")) > 255:
            raise _oserror(errno.ENAMETOOLONG)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> _Node:
        if fh is not None and fh in self._handles:
            return self._nodes[self._handles[fh][0]]
        if path is None:
            raise _oserror(errno.EBADF)
        return self._lookup(path)

    def _new(self, parent: _Node, name: str, is_dir: bool, mode: int) -> _Node:
        node = _Node(self._next_ino, is_dir, mode)
        self._next_ino += 1
        self._nodes[node.ino] = node
        parent.entries[name] = node.ino
        if is_dir:
            parent.nlink += 1
        else:
            node.nlink = 1
        parent.touch()
        return node

    def _drop_link(self, parent: _Node, name: str) -> None:
        node = self._nodes[parent.entries.pop(name)]
        parent.touch()
        if node.is_dir:
            parent.nlink -= 1
            node.nlink = 0
        else:
            node.nlink -= 1
            node.ctime = time.time_ns()
        self._maybe_free(node)

    def _maybe_free(self, node: _Node) -> None:
        # Durable data stays in the backing folder: a cut before the parent's
        # fsync brings the entry back.
        if node.nlink == 0 and node.opened == 0:
            self._nodes.pop(node.ino, None)

    def _open(self, node: _Node, flags: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (node.ino, flags)
        node.opened += 1
        return fh

    def _resize(self, node: _Node, size: int) -> None:
        if size < 0:
            raise _oserror(errno.EINVAL)
        old = len(node.data)
        if size < old:
            del node.data[size:]
            node.floor = min(node.floor, size)
        elif size > old:
            node.data.extend(bytes(size - old))
            node.dirty.update(range(old // PAGE, (size - 1) // PAGE + 1))
        node.touch()

    # -- FUSE operations ----------------------------------------------------

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        print("ready", flush=True)

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        node = self._node(path, fh)
        kind = stat.S_IFDIR if node.is_dir else stat.S_IFREG
        size = 4096 if node.is_dir else len(node.data)
        return {
            "st_mode": kind | node.mode,
            "st_ino": node.ino,
            "st_nlink": node.nlink,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_atime": node.atime,
            "st_mtime": node.mtime,
            "st_ctime": node.ctime,
        }

    def access(self, path: str, amode: int) -> int:
        self._lookup(path)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._backing)
        return {
            key: getattr(st, key)
            for key in (
                "f_bsize",
                "f_frsize",
                "f_blocks",
                "f_bfree",
                "f_bavail",
                "f_files",
                "f_ffree",
                "f_favail",
                "f_namemax",
            )
        }

    def opendir(self, path: str) -> int:
        node = self._lookup(path)
        if not node.is_dir:
            raise _oserror(errno.ENOTDIR)
        return self._open(node, os.O_RDONLY)

    def readdir(self, path: str | None, fh: int) -> list[str]:
        return [".", "..", *self._node(path, fh).entries]

    def releasedir(self, path: str | None, fh: int) -> int:
        return self.release(path, fh)

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self._sync_dir(self._node(path, fh))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        parent, name = self._split(path)
        if name in parent.entries:
            raise _oserror(errno.EEXIST)
        self._new(parent, name, True, mode)
        return 0

    def rmdir(self, path: str) -> int:
        parent, name = self._split(path)
        node = self._lookup(path)
        if not node.is_dir:
            raise _oserror(errno.ENOTDIR)
        if node.entries:
            raise _oserror(errno.ENOTEMPTY)
        if node.ino == ROOT_INO:
            raise _oserror(errno.EBUSY)
        self._drop_link(parent, name)
        return 0

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        parent, name = self._split(path)
        if name in parent.entries:
            if flags & os.O_EXCL:
                raise _oserror(errno.EEXIST)
            return self.open(path, flags)
        return self._open(self._new(parent, name, False, mode), flags)

    def open(self, path: str, flags: int) -> int:
        node = self._lookup(path)
        if node.is_dir and flags & (os.O_WRONLY | os.O_RDWR):
            raise _oserror(errno.EISDIR)
        if flags & os.O_TRUNC and not node.is_dir:
            self._resize(node, 0)
        return self._open(node, flags)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        node = self._node(path, fh)
        return bytes(node.data[offset : offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        node = self._node(path, fh)
        if self._handles.get(fh, (0, 0))[1] & os.O_APPEND:
            offset = len(node.data)
        end = offset + len(data)
        if offset > len(node.data):
            self._resize(node, offset)
        node.data[offset:end] = data
        if data:
            node.dirty.update(range(offset // PAGE, (end - 1) // PAGE + 1))
        node.touch()
        return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        if node.is_dir:
            raise _oserror(errno.EISDIR)
        self._resize(node, length)
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        node = self._node(path, fh)
        if offset < 0 or size <= 0:
            raise _oserror(errno.EINVAL)
        end = offset + size
        if mode & (_PUNCH_HOLE | _ZERO_RANGE):
            if mode & ~(_KEEP_SIZE | _PUNCH_HOLE | _ZERO_RANGE):
                raise _oserror(errno.EOPNOTSUPP)
            if mode & _PUNCH_HOLE and not mode & _KEEP_SIZE:
                raise _oserror(errno.EINVAL)
            if end > len(node.data) and not mode & _KEEP_SIZE:
                self._resize(node, end)
            stop = min(end, len(node.data))
            if offset < stop:
                node.data[offset:stop] = bytes(stop - offset)
                node.dirty.update(range(offset // PAGE, (stop - 1) // PAGE + 1))
            node.touch()
            return 0
        if mode & ~_KEEP_SIZE:
            raise _oserror(errno.EOPNOTSUPP)
        # Reserving space changes nothing visible unless it grows the file.
        if not mode & _KEEP_SIZE and end > len(node.data):
            self._resize(node, end)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close(2) makes nothing durable

    def release(self, path: str | None, fh: int) -> int:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            node = self._nodes.get(handle[0])
            if node is not None:
                node.opened -= 1
                self._maybe_free(node)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        if node.is_dir:
            self._sync_dir(node)
        else:
            self._sync_file(node)
        return 0

    def unlink(self, path: str) -> int:
        parent, name = self._split(path)
        node = self._lookup(path)
        if node.is_dir:
            raise _oserror(errno.EISDIR)
        self._drop_link(parent, name)
        return 0

    def link(self, target: str, source: str) -> int:
        node = self._lookup(source)
        if node.is_dir:
            raise _oserror(errno.EPERM)
        parent, name = self._split(target)
        if name in parent.entries:
            raise _oserror(errno.EEXIST)
        parent.entries[name] = node.ino
        node.nlink += 1
        node.ctime = time.time_ns()
        parent.touch()
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        old_parent, old_name = self._split(old)
        new_parent, new_name = self._split(new)
        if old_name not in old_parent.entries:
            raise _oserror(errno.ENOENT)
        node = self._nodes[old_parent.entries[old_name]]
        if flags & ~(_NOREPLACE | _EXCHANGE) or flags == _NOREPLACE | _EXCHANGE:
            raise _oserror(errno.EINVAL)
        if node.is_dir:
            # A directory cannot move below itself.
            probe = new.rstrip("/") + "/"
            if probe.startswith(old.rstrip("/") + "/") and probe != old.rstrip("/") + "/":
                raise _oserror(errno.EINVAL)
        target_ino = new_parent.entries.get(new_name)
        if flags & _EXCHANGE:
            if target_ino is None:
                raise _oserror(errno.ENOENT)
            other = self._nodes[target_ino]
            old_parent.entries[old_name], new_parent.entries[new_name] = target_ino, node.ino
            if node.is_dir != other.is_dir and old_parent is not new_parent:
                step = 1 if node.is_dir else -1
                new_parent.nlink += step
                old_parent.nlink -= step
            old_parent.touch()
            new_parent.touch()
            return 0
        if target_ino is not None:
            if flags & _NOREPLACE:
                raise _oserror(errno.EEXIST)
            if target_ino == node.ino:
                return 0
            target = self._nodes[target_ino]
            if node.is_dir and not target.is_dir:
                raise _oserror(errno.ENOTDIR)
            if not node.is_dir and target.is_dir:
                raise _oserror(errno.EISDIR)
            if target.is_dir and target.entries:
                raise _oserror(errno.ENOTEMPTY)
            self._drop_link(new_parent, new_name)
        del old_parent.entries[old_name]
        new_parent.entries[new_name] = node.ino
        if node.is_dir and old_parent is not new_parent:
            old_parent.nlink -= 1
            new_parent.nlink += 1
        node.ctime = time.time_ns()
        old_parent.touch()
        new_parent.touch()
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        node = self._lookup(path or "")
        node.mode = mode & 0o7777
        node.ctime = time.time_ns()
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        self._lookup(path or "")
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        node = self._lookup(path or "")
        now = time.time_ns()
        node.atime, node.mtime = times if times is not None else (now, now)
        return 0


def serve(mount: str, backing: str) -> None:
    """Mounts the filesystem and serves it until unmounted (or killed)."""
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy  # type: ignore[import-untyped]

    class _FUSE(mfusepy.FUSE):  # type: ignore[misc]
        # mfusepy drops renameat2's flags and ftruncate's file handle: keep both.
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return self.operations.rename(  # type: ignore[no-any-return]
                old.decode(self.encoding, self.errors),
                new.decode(self.encoding, self.errors),
                flags,
            )

        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            fh = fip.contents.fh if fip else None
            decoded = None if path is None else path.decode(self.encoding, self.errors)
            return self.operations.truncate(decoded, length, fh)  # type: ignore[no-any-return]

    _FUSE(
        LazyOperations(Path(backing)),
        mount,
        foreground=True,
        nothreads=True,
        fsname="lazyfs",
        subtype="lazyfs",
        hard_remove=True,
    )


class LazyFS:
    """Runs the filesystem in a subprocess; every step bounded in time.

    Example::

        with LazyFS(tmp / "mnt", tmp / "backing", tmp / "lazyfs.log") as fs:
            ...            # use tmp/mnt
            fs.crash()     # power cut: unfsynced changes are gone, unmounted
            fs.mount()     # back on, showing only the durable state
    """

    def __init__(self, mount: Path, backing: Path, log_path: Path) -> None:
        self.mount_point = mount
        self.backing = backing
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.crashes = 0
        self._log: IO[str] | None = None

    def mount(self) -> None:
        assert self.proc is None, "already mounted"
        self.mount_point.mkdir(parents=True, exist_ok=True)
        self.backing.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in _reap
        self.proc = proc = subprocess.Popen(
            [sys.executable, __file__, str(self.mount_point), str(self.backing)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        # stat() of the mount point is answered only once FUSE's init is done.
        while not os.path.ismount(self.mount_point):
            if proc.poll() is not None or time.monotonic() > deadline:
                self._reap()
                raise RuntimeError(
                    f"lazyfs did not mount {self.mount_point} within {MOUNT_TIMEOUT}s; "
                    f"log:\n{self.log_path.read_text()[-3000:]}"
                )
            time.sleep(0.02)

    def crash(self) -> None:
        """A power cut: the filesystem process dies with every unfsynced change."""
        assert self.proc is not None, "not mounted"
        self.proc.kill()
        self.crashes += 1
        self._reap()

    def unmount(self) -> None:
        """Unmounts; what was not fsynced is lost (no write-back at unmount)."""
        if self.proc is not None:
            _fusermount(self.mount_point, lazy=False)
        self._reap()

    def _reap(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.wait(timeout=UNMOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=UNMOUNT_TIMEOUT)
        if os.path.ismount(self.mount_point) or _in_mount_table(self.mount_point):
            _fusermount(self.mount_point, lazy=False)
        if _in_mount_table(self.mount_point):
            _fusermount(self.mount_point, lazy=True)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LazyFS:
        self.mount()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.crash()
        else:
            self._reap()


def _in_mount_table(mount: Path) -> bool:
    target = os.path.abspath(mount)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts if len(line.split()) > 1)


def _fusermount(mount: Path, *, lazy: bool) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    args = [tool, "-u", "-q"] + (["-z"] if lazy else []) + [str(mount)]
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run(args, timeout=UNMOUNT_TIMEOUT, check=False, capture_output=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} MOUNT BACKING")
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    serve(sys.argv[1], sys.argv[2])
