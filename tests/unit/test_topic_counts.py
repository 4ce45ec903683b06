"""What the fault suite, the soak and ``bench.publish_once`` report of a topic (``tests.support.count_topic``)."""

from __future__ import annotations

from collections import namedtuple

import orjson
import pytest

from tests.support import TopicCount, count_topic, event_id_of

Record = namedtuple("Record", "partition offset key value")


def records(*events: tuple[int, str, str]) -> list[Record]:
    """(partition, key, event id) in the order each partition received them."""
    offsets: dict[int, int] = {}
    out = []
    for partition, key, event_id in events:
        offsets[partition] = offsets.get(partition, -1) + 1
        out.append(Record(partition, offsets[partition], key.encode(), orjson.dumps({"id": event_id, "data": {}})))
    return out


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], TopicCount(0, 0, 0, 0, 0)),
        ([(0, "a", "1"), (0, "a", "2"), (1, "b", "3")], TopicCount(3, 3, 0, 0, 0)),
        # a repeat of the newest event of its key: repeated, but nothing older after something newer
        ([(0, "a", "1"), (0, "a", "2"), (0, "a", "2")], TopicCount(3, 2, 1, 0, 0)),
        # an older event again after a newer one: a reader keeping the latest state steps back
        ([(0, "a", "1"), (0, "a", "2"), (0, "a", "1"), (0, "a", "2")], TopicCount(4, 2, 2, 1, 1)),
        # a whole run published twice (a relay's in-flight rows): every repeat but the last steps back
        ([(0, "a", "1"), (0, "a", "2"), (0, "a", "3"), (0, "a", "1"), (0, "a", "2"), (0, "a", "3")],
         TopicCount(6, 3, 3, 2, 1)),
        # keys apart: each key's order is its own
        ([(0, "a", "1"), (1, "b", "2"), (1, "b", "3"), (0, "a", "1"), (1, "b", "2")], TopicCount(5, 3, 2, 1, 1)),
    ],
)
def test_count_topic(events, expected):
    assert count_topic(records(*events)) == expected


def test_records_are_counted_in_partition_order_whatever_order_they_come_in():
    ordered = records((0, "a", "1"), (0, "a", "2"), (0, "a", "1"))
    assert count_topic(list(reversed(ordered))) == count_topic(ordered) == TopicCount(3, 2, 1, 1, 1)


def test_values_that_are_no_events_count_as_their_own_ids():
    poison = [Record(0, 0, b"k", b"not json"), Record(0, 1, b"k", b'{"no": "id"}'), Record(0, 2, b"k", b"not json")]
    assert event_id_of(b"not json") == repr(b"not json")
    assert count_topic(poison) == TopicCount(3, 2, 1, 1, 1)


def test_the_report_line_names_each_figure():
    assert str(TopicCount(4, 2, 2, 1, 1)) == "messages=4 distinct_ids=2 repeats=2 stepped_back=1 (keys 1)"


def test_the_newest_repeats_are_named_with_where_each_came_first_and_again():
    count = count_topic(records(*[(0, "a", str(i)) for i in range(8)], *[(0, "a", str(i)) for i in range(7)]))
    assert count.repeats == 7
    assert count.repeated == tuple(f"{i} key=b'a' p0 @{i} again p0 @{8 + i}" for i in range(2, 7))
    assert count_topic(records((0, "a", "1"), (1, "a", "1"))).repeated == ("1 key=b'a' p0 @0 again p1 @0",)


def test_each_partitions_end_is_the_offset_after_its_last_record():
    assert count_topic(records((0, "a", "1"), (0, "a", "2"), (2, "b", "3"))).ends == ((0, 2), (2, 1))
