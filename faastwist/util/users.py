"""Who a function runs as: the user and group from ``process.user``/``process.group``.

A node running as root never runs a function as root: with no user configured, the
functions get ``nobody``/``nogroup``. A node running as another user cannot switch
users, so its functions run as that user (and a configured different user is an
error, not silently ignored).
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
from typing import Callable

import attrs

DEFAULT_USER = "nobody"
DEFAULT_GROUP = "nogroup"


class UserError(ValueError):
    """``key`` (process.user or process.group) names something unusable."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@attrs.frozen
class Identity:
    user: str
    uid: int
    group: str
    gid: int
    switch: bool   # the node (root) drops to this identity for every child

    def may(self, path: str, want: int) -> bool:
        """Could this identity open ``path`` for ``want`` (os.R_OK, os.X_OK, or both)?
        Mode bits only (the owner, group, other triplets along the path)."""
        return can_access(path, self.uid, (self.gid,), want)


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise UserError("user", f"no such user: {name!r}") from None


def _group(name: str) -> grp.struct_group:
    try:
        return grp.getgrgid(int(name)) if name.isdigit() else grp.getgrnam(name)
    except (KeyError, OverflowError):
        raise UserError("group", f"no such group: {name!r}") from None


def resolve_identity(user: str = "", group: str = "", euid: int | None = None) -> Identity:
    """The identity children run as; UserError names the key that cannot be used."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        me = pwd.getpwuid(euid)
        mine = grp.getgrgid(os.getegid())
        if user and _user(user).pw_uid != euid:
            raise UserError("user", f"switching to {user!r} needs the node to run as root "
                                    f"(it runs as {me.pw_name}); leave process.user unset")
        if group and _group(group).gr_gid != mine.gr_gid:
            raise UserError("group", f"switching to {group!r} needs the node to run as root; "
                                     f"leave process.group unset")
        return Identity(me.pw_name, euid, mine.gr_name, mine.gr_gid, switch=False)
    entry = _user(user or DEFAULT_USER)
    if entry.pw_uid == 0:
        raise UserError("user", f"{entry.pw_name!r} is root: functions never run as root")
    if group:
        group_entry = _group(group)
    elif user:
        group_entry = grp.getgrgid(entry.pw_gid)
    else:
        try:
            group_entry = grp.getgrnam(DEFAULT_GROUP)
        except KeyError:
            group_entry = grp.getgrgid(entry.pw_gid)
    if group_entry.gr_gid == 0:
        raise UserError("group", f"{group_entry.gr_name!r} is root's group: functions never "
                                 f"run with it")
    return Identity(entry.pw_name, entry.pw_uid, group_entry.gr_name, group_entry.gr_gid,
                    switch=True)


def _allowed(info: os.stat_result, uid: int, gids: tuple[int, ...], bits: int) -> bool:
    if uid == 0:
        # root passes everything but needs one x bit to execute
        return not (bits & os.X_OK and stat.S_ISREG(info.st_mode) and not info.st_mode & 0o111)
    if info.st_uid == uid:
        mode = (info.st_mode >> 6) & 7
    elif info.st_gid in gids:
        mode = (info.st_mode >> 3) & 7
    else:
        mode = info.st_mode & 7
    return mode & bits == bits


def can_access(path: str, uid: int, gids: tuple[int, ...], want: int) -> bool:
    """Mode-bit check of ``path`` (symlinks resolved) for another uid: every folder on
    the way needs x, the file itself ``want``. ACLs are not consulted."""
    real = os.path.realpath(path)
    try:
        parts = real.split("/")
        folder = "/"
        for part in parts[1:-1]:
            folder = os.path.join(folder, part)
            if not _allowed(os.stat(folder), uid, gids, os.X_OK):
                return False
        return _allowed(os.stat(real), uid, gids, want)
    except OSError:
        return False


@attrs.frozen
class UidRange:
    """``process.uidRange``: the uids (and gids, the same numbers) functions run as, one
    per function, so that no function can signal, trace or read another."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> "UidRange":
        """``FIRST-LAST``; UserError naming ``uidRange`` when it is not a usable range."""
        first, sep, last = text.strip().partition("-")
        if not sep or not first.strip().isdigit() or not last.strip().isdigit():
            raise UserError("uidRange", f"must be FIRST-LAST (e.g. 200000-265535), "
                                        f"got {text!r}")
        low, high = int(first), int(last)
        if low < 1000 or high < low or high >= 2**32 - 1:
            raise UserError("uidRange", f"must lie within 1000-4294967294 with FIRST <= "
                                        f"LAST, got {text!r}")
        return cls(low, high)

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def uid_for(self, name: str, taken: Callable[[int], bool] = lambda uid: False) -> int:
        """The function's uid: from a hash of its name, the next free one when another
        function (or an account of this machine) holds it; UserError when all are taken."""
        start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % self.size
        for step in range(self.size):
            uid = self.first + (start + step) % self.size
            if not taken(uid):
                return uid
        raise UserError("uidRange", f"all {self.size} uids are taken")

    def identity(self, uid: int) -> Identity:
        return Identity(str(uid), uid, str(uid), uid, switch=True)


def account_exists(uid: int) -> bool:
    """A uid of this machine's accounts (or a group's gid): never given to a function."""
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    try:
        grp.getgrgid(uid)
        return True
    except KeyError:
        return False
