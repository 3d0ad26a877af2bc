"""Attacks by another local user: planted temp folders and shared-memory segments.

These tests create a second, unprivileged user (``useradd``; removed after)
and act as that user in subprocesses, so they need root (CI runs as root).
The victim is this test process.
"""

from __future__ import annotations

import os
import pickle
import pwd
import shutil
import stat
import subprocess
import tempfile

import pytest

import skate
from skate._private import private_paths
from skate._private.config import CONFIG
from skate._private.object_store import shm


class _CreatesFile:
    """Unpickling this creates ``path`` (what a planted segment would hold)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class OtherUser:
    """A second local account that runs shell commands as itself."""

    def __init__(self, name: str | None, uid: int, gid: int) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid

    def sh(self, script: str, stdin: bytes = b"") -> None:
        """Runs ``script`` with /bin/sh as this user (no supplementary groups)."""
        done = subprocess.run(
            ["/bin/sh", "-c", script], user=self.uid, group=self.gid, extra_groups=[], cwd="/",
            env={"PATH": "/usr/bin:/bin"}, input=stdin, capture_output=True, timeout=30,
        )
        assert done.returncode == 0, f"as uid {self.uid}: {script!r} failed: {done.stderr!r}"


def _free_uid() -> int:
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


@pytest.fixture(scope="module")
def other_user():
    """A fresh unprivileged user, removed after this module's tests."""
    if os.geteuid() != 0:
        pytest.skip("acting as a second local user needs root (to create the user and switch to it); CI runs as root")
    useradd = shutil.which("useradd")
    name = f"sktatk{os.getpid() % 100000}"
    made = useradd is not None and subprocess.run(
        [useradd, "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, timeout=60,
    ).returncode == 0
    if not made:
        # No account tools (or a read-only /etc) here: a uid no account uses is just as foreign.
        uid = _free_uid()
        yield OtherUser(None, uid, uid)
        return
    try:
        entry = pwd.getpwnam(name)
        yield OtherUser(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run([shutil.which("userdel") or "userdel", name], capture_output=True, timeout=60)
        if shutil.which("groupdel"):
            subprocess.run(["groupdel", name], capture_output=True, timeout=60)  # if userdel left it


@pytest.fixture
def planted_temp_dir(other_user, monkeypatch):
    """skate's temp folder, created first by the other user (world-writable), with a
    ``clusters/latest.json`` that points at a server and token of theirs."""
    path = os.path.join(tempfile.gettempdir(), f"skate-victim-{os.urandom(4).hex()}")
    other_user.sh(
        f"mkdir -m 777 {path} && mkdir -m 777 {path}/clusters {path}/session_evil && "
        f"printf evil-token > {path}/session_evil/token && "
        f"printf '{{\"gcs_address\": \"127.0.0.1:1\", \"session_dir\": \"{path}/session_evil\", "
        f"\"token_file\": \"{path}/session_evil/token\"}}' > {path}/clusters/latest.json && "
        f"chmod 666 {path}/clusters/latest.json {path}/session_evil/token"
    )
    assert os.stat(path).st_uid == other_user.uid
    monkeypatch.setattr(CONFIG, "temp_dir", path)
    yield path
    shutil.rmtree(path)


def _attacker_files(path: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), path) for d, dirs, files in os.walk(path) for f in [*dirs, *files]}


def test_init_refuses_a_temp_dir_another_user_created(planted_temp_dir, other_user):
    before = _attacker_files(planted_temp_dir)
    with pytest.raises(private_paths.UnsafePathError) as info:
        skate.init(num_cpus=1)
    msg = str(info.value)
    assert planted_temp_dir in msg
    assert f"uid {other_user.uid}" in msg and "owned by" in msg
    assert "SKATE_TEMP_DIR" in msg  # what to do about it
    assert isinstance(info.value, RuntimeError)
    assert not skate.is_initialized()
    # Nothing of the victim's (session folder, token, sockets) went into it.
    assert _attacker_files(planted_temp_dir) == before


def test_init_auto_refuses_records_in_a_temp_dir_another_user_created(planted_temp_dir, other_user):
    with pytest.raises(private_paths.UnsafePathError) as info:
        skate.init(address="auto")
    assert planted_temp_dir in str(info.value) and f"uid {other_user.uid}" in str(info.value)
    assert not skate.is_initialized()
    with pytest.raises(private_paths.UnsafePathError):
        skate.init(address="127.0.0.1:1")  # the record for an explicit address too


def test_own_temp_dir_writable_by_others_is_refused(monkeypatch):
    path = os.path.join(tempfile.gettempdir(), f"skate-open-{os.urandom(4).hex()}")
    os.mkdir(path)
    os.chmod(path, 0o777)
    monkeypatch.setattr(CONFIG, "temp_dir", path)
    try:
        with pytest.raises(private_paths.UnsafePathError) as info:
            skate.init(num_cpus=1)
        assert path in str(info.value) and "0777" in str(info.value)
        assert not skate.is_initialized()
        assert os.listdir(path) == []
    finally:
        shutil.rmtree(path)


@pytest.fixture
def shared_dir():
    """A sticky folder every user may write to, like /tmp."""
    path = tempfile.mkdtemp(prefix="skate-shared-")
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path)


def test_token_file_owned_by_another_user_is_not_read(other_user, shared_dir, tmp_path):
    token = os.path.join(shared_dir, "token")
    other_user.sh(f"printf not-yours > {token} && chmod 600 {token}")
    with pytest.raises(private_paths.UnsafePathError) as info:
        private_paths.read_token(token)
    assert "owned by" in str(info.value) and token in str(info.value)
    with pytest.raises(private_paths.UnsafePathError):
        private_paths.check_dir(shared_dir)  # world-writable
    # A symbolic link in place of a record is not followed either.
    os.symlink(token, tmp_path / "link")
    with pytest.raises(private_paths.UnsafePathError):
        private_paths.read_private(str(tmp_path / "link"))


# --- shared-memory segments -------------------------------------------------------------


def _segment_of(ref) -> str:
    hexid = ref.hex()
    names = [n for n in os.listdir(shm.SHM_DIR or "/tmp") if n.startswith(CONFIG.shm_prefix + "-") and n.endswith(hexid)]
    assert len(names) == 1, names
    return os.path.join(shm.SHM_DIR or "/tmp", names[0])


def _next_put_segment(ref) -> str:
    """Where the driver's next put will go: object ids of puts are a prefix and a counter."""
    oid = ref._id
    nxt = oid[:-8] + (int.from_bytes(oid[-8:], "little") + 1).to_bytes(8, "little")
    return _segment_of(ref)[: -len(oid.hex())] + nxt.hex()


@pytest.mark.parametrize("mode", ["666", "600"])
def test_put_refuses_a_segment_planted_by_another_user(ray_start, other_user, mode):
    big = b"s" * (1 << 20)  # past max_inline_bytes: goes to shared memory
    first = skate.put(big)
    path = _next_put_segment(first)
    other_user.sh(f"printf planted > {path} && chmod {mode} {path}")
    try:
        with pytest.raises(PermissionError) as info:
            skate.put(b"secret" * (1 << 18))
        assert path in str(info.value) and f"uid {other_user.uid}" in str(info.value)
        # The victim's object never went into the other user's file.
        with open(path, "rb") as f:
            assert f.read() == b"planted"
        assert os.stat(path).st_uid == other_user.uid
    finally:
        os.unlink(path)
    assert skate.get(skate.put(big), timeout=60) == big  # the store still works
    assert skate.get(first, timeout=60) == big


@pytest.mark.parametrize("owner", ["other user", "self, world-writable"])
def test_reader_refuses_a_segment_it_does_not_own_privately(other_user, tmp_path, owner):
    canary = tmp_path / "pwned"
    evil = pickle.dumps(_CreatesFile(str(canary)), protocol=5)
    path = shm.segment_path(f"{CONFIG.shm_prefix}-planted{os.urandom(3).hex()}", os.urandom(20))
    if owner == "other user":
        other_user.sh(f"cat > {path} && chmod 600 {path}", stdin=evil)
    else:
        with open(path, "wb") as f:
            f.write(evil)
        os.chmod(path, 0o666)
    try:
        with pytest.raises(PermissionError) as info:
            shm.open_readonly(path)
        assert path in str(info.value)
        with pytest.raises(PermissionError):
            shm.create(path, 64)
    finally:
        os.unlink(path)
    assert not canary.exists()


def test_segment_symlink_is_not_followed(tmp_path):
    target = tmp_path / "victim-file"
    target.write_bytes(b"keep")
    path = shm.segment_path(f"{CONFIG.shm_prefix}-link{os.urandom(3).hex()}", os.urandom(20))
    os.symlink(target, path)
    try:
        with pytest.raises(PermissionError):
            shm.create(path, 64)
        with pytest.raises(PermissionError):
            shm.open_readonly(path)
    finally:
        os.unlink(path)
    assert target.read_bytes() == b"keep"


def test_segments_are_owner_only_and_recycled_warm(ray_start):
    from skate._private import runtime

    big = b"w" * (4 << 20)
    ref = skate.put(big)
    path = _segment_of(ref)
    st = os.stat(path)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
    inode = st.st_ino
    del ref
    core = runtime.current_or_none()
    # The freed segment goes to the store's pool; the next object of its size reuses the file.
    from conftest import wait_for

    def reused() -> bool:
        r = skate.put(big)
        try:
            return os.stat(_segment_of(r)).st_ino == inode
        finally:
            del r

    assert core is not None
    wait_for(reused, 10, interval=0.05, what="the freed segment to be reused")
