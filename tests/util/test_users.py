"""Function users (faastwist.util.users): a uid per function from process.uidRange, the
same on every node, never an existing account's."""

from __future__ import annotations

import pytest

from faastwist.util.users import UidRange, UserError, account_exists


def test_uid_range_parse_and_one_uid_per_function() -> None:
    uids = UidRange.parse("200000-200009")
    assert (uids.first, uids.last, uids.size) == (200000, 200009, 10)
    a = uids.uid_for("echo")
    assert uids.uid_for("echo") == a and 200000 <= a <= 200009
    assert uids.uid_for("echo", lambda uid: uid == a) == 200000 + (a - 200000 + 1) % 10
    with pytest.raises(UserError, match="all 10 uids are taken"):
        uids.uid_for("echo", lambda uid: True)
    identity = uids.identity(a)
    assert (identity.user, identity.uid, identity.group, identity.gid, identity.switch) == (
        str(a), a, str(a), a, True)
    for bad in ("200000", "x-y", "5-900000", "300000-200000", "0-10", "1000-4294967295"):
        with pytest.raises(UserError) as raised:
            UidRange.parse(bad)
        assert raised.value.key == "uidRange"
    assert UidRange.parse("1000-4294967294").size == 4294967294 - 1000 + 1


def test_uid_range_messages_and_the_same_uid_everywhere() -> None:
    uids = UidRange.parse("200000-265535")
    # a hash of the name: every node (and every version) gives echo the same uid
    assert (uids.uid_for("echo"), uids.uid_for("wordcount")) == (221918, 221512)
    assert UidRange.parse(" 1000-1000 ") == UidRange(1000, 1000)
    for bad, problem in (
            ("x", "must be FIRST-LAST (e.g. 200000-265535), got 'x'"),
            ("1-x", "must be FIRST-LAST (e.g. 200000-265535), got '1-x'"),
            ("5-9", "must lie within 1000-4294967294 with FIRST <= LAST, got '5-9'"),
            ("2000-1999", "must lie within 1000-4294967294 with FIRST <= LAST, got '2000-1999'")):
        with pytest.raises(UserError) as raised:
            UidRange.parse(bad)
        assert (raised.value.key, raised.value.problem) == ("uidRange", problem)
    with pytest.raises(UserError) as raised:
        UidRange(1000, 1001).uid_for("f", lambda uid: True)
    assert (raised.value.key, raised.value.problem) == ("uidRange", "all 2 uids are taken")


def test_accounts_are_never_given_to_functions() -> None:
    import grp
    import pwd
    assert account_exists(0)
    users = {entry.pw_uid for entry in pwd.getpwall()}
    group_only = next(g.gr_gid for g in grp.getgrall() if g.gr_gid not in users)
    assert account_exists(group_only)
    free = next(uid for uid in range(3_999_000, 4_000_000) if uid not in users
                and uid not in {g.gr_gid for g in grp.getgrall()})
    assert not account_exists(free)
