"""The group checker itself (no server): fed events that break the contract,
it must say so; fed a clean history, it must not."""

from __future__ import annotations

from streams.v1 import streams_pb2 as pb
from tests.support.group_checker import ACK, NONE, PARK, PARKED, PER_SEGMENT, RETRY, GroupChecker

SPACE = "sp"


def rec(segment: str, sequence: int, position: int, payload: bytes = b"x") -> pb.Record:
    return pb.Record(
        space=SPACE, segment=segment, sequence=sequence, position=position, payload=payload
    )


def parked_copy(r: pb.Record, attempts: int, reason: str, at: int) -> pb.Record:
    meta = dict(r.metadata)
    meta.update(
        {
            PARKED + "space": SPACE,
            PARKED + "segment": r.segment,
            PARKED + "sequence": str(r.sequence),
            PARKED + "position": str(r.position),
            PARKED + "attempts": str(attempts),
            PARKED + "reason": reason,
        }
    )
    return pb.Record(space="$parked", segment="sp/g", position=at, payload=r.payload, metadata=meta)


def info(through: int, last: int, parked: int = 0) -> pb.GroupInfo:
    return pb.GroupInfo(acked_through=through, last_position=last, parked=parked)


A1, A2, B1 = rec("a", 1, 1), rec("a", 2, 2), rec("b", 1, 3)
SPACE_RECORDS = [A1, A2, B1]


def clean(checker: GroupChecker) -> None:
    checker.joined("m1", "id1", 10)
    checker.joined("m2", "id2", 10)
    checker.delivered("m1", A1, 1)
    checker.delivered("m2", B1, 1)
    checker.answered("m1", [1], RETRY, "try again")
    checker.delivered("m1", A1, 2)
    checker.answered("m1", [1], PARK, "bad")
    checker.delivered("m1", A2, 1)
    checker.answered("m1", [2], ACK)
    checker.answered("m2", [3], ACK)
    checker.observed(info(3, 3, 1))


def test_a_clean_history_passes() -> None:
    checker = GroupChecker(PER_SEGMENT, 4, SPACE)
    clean(checker)
    assert checker.finish(SPACE_RECORDS, [parked_copy(A1, 2, "bad", 1)], info(3, 3, 1)) == []


def test_the_next_record_before_the_previous_is_settled() -> None:
    checker = GroupChecker(PER_SEGMENT, 4, SPACE)
    checker.joined("m1", "id1", 10)
    checker.delivered("m1", A1, 1)
    checker.delivered("m1", A2, 1)  # A1 not answered
    checker.answered("m1", [1, 2], ACK)
    checker.delivered("m1", B1, 1)
    checker.answered("m1", [3], ACK)
    text = "\n".join(checker.finish(SPACE_RECORDS, [], info(3, 3)))
    assert "a/2 (position 2) attempt 1 to m1: delivered before a/1 (position 1)" in text


def test_an_ack_by_a_member_not_holding_it_settles_nothing() -> None:
    checker = GroupChecker(PER_SEGMENT, 4, SPACE)
    checker.joined("m1", "id1", 10)
    checker.joined("m2", "id2", 10)
    checker.delivered("m1", A1, 1)
    checker.answered("m2", [1], ACK)  # stray: m1 holds it
    checker.ended("m1")
    checker.delivered("m2", A2, 1)
    assert checker.stats["stray answers"] == 1
    text = "\n".join(checker.finish(SPACE_RECORDS, [], info(3, 3)))
    assert "delivered before a/1" in text
    assert "a/1 (position 1): settled and not parked, but never acked" in text


def test_redelivery_after_the_next_record_and_after_acked_through() -> None:
    checker = GroupChecker(PER_SEGMENT, 4, SPACE)
    checker.joined("m1", "id1", 10)
    checker.delivered("m1", A1, 1)
    checker.answered("m1", [1], ACK)
    checker.delivered("m1", A2, 1)
    checker.delivered("m1", A1, 2)  # settled durably, delivered again
    checker.answered("m1", [1, 2], ACK)
    checker.delivered("m1", B1, 1)
    checker.observed(info(3, 3))
    checker.answered("m1", [3], RETRY)
    checker.delivered("m1", B1, 2)  # GetGroup said it was settled
    text = "\n".join(checker.violations)
    assert "a/1 (position 1) attempt 2 to m1: delivered again after a/2" in text
    assert "b/1 (position 3) attempt 2 to m1: GetGroup said acked_through 3" in text


def test_a_segment_moving_from_a_live_member_and_a_record_in_flight_twice() -> None:
    checker = GroupChecker(PER_SEGMENT, 4, SPACE)
    checker.joined("m1", "id1", 10)
    checker.joined("m2", "id2", 10)
    checker.delivered("m1", A1, 1)
    checker.answered("m1", [1], RETRY)
    checker.delivered("m2", A1, 2)  # m1 is alive and the segment had a record waiting
    checker.delivered("m1", A1, 3)  # in flight at m2 still
    text = "\n".join(checker.violations)
    assert "segment moved from live member m1 while a/1 was not acked or parked" in text
    assert "a/1 (position 1) attempt 3 to m1: still in flight at live member m2" in text


def test_moves_are_fine_when_the_member_left_or_the_segment_was_free() -> None:
    checker = GroupChecker(PER_SEGMENT, 4, SPACE)
    checker.joined("m1", "id1", 10)
    checker.joined("m2", "id2", 10)
    checker.delivered("m1", A1, 1)
    checker.ended("m1")
    checker.delivered("m2", A1, 2)
    checker.answered("m2", [1], ACK)
    checker.joined("m3", "id3", 10)
    checker.delivered("m3", A2, 1)  # free once a/1 settled
    assert checker.violations == []


def test_attempts() -> None:
    checker = GroupChecker(NONE, 3, SPACE)
    checker.joined("m1", "id1", 10)
    checker.delivered("m1", A1, 2)  # the first delivery ever, and no stream ended
    checker.delivered("m1", A2, 1)
    checker.delivered("m1", A2, 3)  # skipped 2
    checker.delivered("m1", B1, 1)
    checker.delivered("m1", B1, 1)  # not counting up
    checker.delivered("m1", B1, 4)  # past max_attempts
    text = "\n".join(checker.violations)
    assert "a/1 (position 1) attempt 2 to m1: the first delivery" in text
    assert "a/2 (position 2) attempt 3 to m1: skipped from attempt 1" in text
    assert "b/1 (position 3) attempt 1 to m1: attempt after attempt 1" in text
    assert "b/1 (position 3) attempt 4 to m1: attempt outside 1..max_attempts 3" in text


def test_parked_records_checked() -> None:
    checker = GroupChecker(PER_SEGMENT, 4, SPACE)
    clean(checker)
    wrong = parked_copy(A1, 2, "bad", 1)
    wrong.metadata[PARKED + "segment"] = "z"
    twice = parked_copy(A1, 2, "bad", 2)
    extra = parked_copy(B1, 1, "never sent", 3)  # acked, yet parked
    text = "\n".join(checker.finish(SPACE_RECORDS, [wrong, twice, extra], info(3, 3, 1)))
    assert "parked record of position 1: origin metadata" in text
    assert "parked record of position 1: parked twice" in text
    assert "parked record of position 3: reason 'never sent' was never sent" in text
    assert "b/1 (position 3): parked after 1 attempts, no park nack" in text
    assert "GetGroup parked 1, the dead-letter segment 3" in text


def test_a_park_nack_lost_and_acked_through_ahead_of_the_acks() -> None:
    checker = GroupChecker(PER_SEGMENT, 4, SPACE)
    checker.joined("m1", "id1", 10)
    checker.delivered("m1", A1, 1)
    checker.observed(info(1, 3))  # nothing was answered yet
    checker.answered("m1", [1], PARK, "bad")
    checker.delivered("m1", A2, 1)
    checker.answered("m1", [2], ACK)
    checker.delivered("m1", B1, 1)
    checker.answered("m1", [3], ACK)
    text = "\n".join(checker.finish(SPACE_RECORDS, [], info(3, 3)))
    assert "a/1 (position 1): settled and not parked, but never acked" in text
    assert "GetGroup said acked_through 1 at event" in text
    assert "GetGroup parked" not in text


def test_nothing_lost_and_the_end_state() -> None:
    checker = GroupChecker(PER_SEGMENT, 4, SPACE)
    checker.joined("m1", "id1", 10)
    checker.delivered("m1", A1, 1)
    checker.answered("m1", [1], ACK)
    end = pb.GroupInfo(acked_through=2, last_position=3, in_flight=1)
    end.members.add(id="ghost", in_flight=1)
    checker.observed(end)
    text = "\n".join(checker.finish(SPACE_RECORDS, [], end))
    assert "a/2 (position 2): never delivered to a member, yet settled" in text
    assert "in the end GetGroup says acked_through 2, last_position 3" in text
    assert "GetGroup listed member 'ghost', which never joined" in text


def test_a_late_delivery_to_a_member_that_ended_says_nothing_of_its_holder() -> None:
    """Streams are ordered one by one, not with each other: a delivery sent to
    a member before the server saw it leave can be read after the record's
    redelivery to another member (seen under load: attempt 1 read after
    attempt 2, which then made the new holder's ack look stray)."""
    checker = GroupChecker(PER_SEGMENT, 4, SPACE)
    checker.joined("m1", "id1", 10)
    checker.joined("m2", "id2", 10)
    checker.ended("m1")  # it half-closes, and goes on reading
    checker.delivered("m2", A1, 2)  # redelivered after the server saw m1 leave...
    checker.delivered("m1", A1, 1)  # ...read before m1's copy sent earlier
    checker.answered("m2", [1], ACK)
    checker.delivered("m2", A2, 1)
    checker.answered("m2", [2], ACK)
    checker.delivered("m2", B1, 1)
    checker.answered("m2", [3], ACK)
    assert checker.finish(SPACE_RECORDS, [], info(3, 3)) == []
    assert checker.stats["late deliveries"] == 1
