import pytest

from {{module}} import EventBus, topic_matches


def test_topic_matching():
    assert topic_matches("orders.created", "orders.created")
    assert not topic_matches("orders.created", "orders.deleted")
    assert topic_matches("orders.*", "orders.created")
    assert not topic_matches("orders.*", "orders.eu.created")
    assert not topic_matches("orders.*", "orders")
    assert topic_matches("*.created", "users.created")
    assert topic_matches("orders.>", "orders.created")
    assert topic_matches("orders.>", "orders.eu.created")
    assert not topic_matches("orders.>", "orders")
    assert topic_matches(">", "anything.at.all")
    assert not topic_matches("a.b.c", "a.b")


def test_invalid_topics_and_patterns():
    for bad in ["", "a..b", ".a", "a.>.b"]:
        with pytest.raises(ValueError):
            topic_matches(bad, "a.b")
    with pytest.raises(ValueError):
        topic_matches("a.*", "a.*")
    bus = EventBus()
    with pytest.raises(ValueError):
        bus.subscribe("a.>.c", lambda t, p: None)
    with pytest.raises(ValueError):
        bus.publish("a.>")


def test_publish_reaches_matching_subscribers_in_order():
    bus = EventBus()
    seen = []
    bus.subscribe("orders.>", lambda t, p: seen.append(("all", t, p)))
    bus.subscribe("orders.created", lambda t, p: seen.append(("exact", t, p)))
    bus.subscribe("users.*", lambda t, p: seen.append(("users", t, p)))
    result = bus.publish("orders.created", {"id": 1})
    assert result.delivered == 2 and result.errors == []
    assert seen == [("all", "orders.created", {"id": 1}), ("exact", "orders.created", {"id": 1})]
    assert bus.publish("billing.paid").delivered == 0


def test_unsubscribe():
    bus = EventBus()
    seen = []
    sub = bus.subscribe("a.*", lambda t, p: seen.append(t))
    assert len(bus) == 1
    assert bus.unsubscribe(sub) is True
    assert bus.unsubscribe(sub) is False
    bus.publish("a.b")
    assert seen == [] and len(bus) == 0


def test_a_failing_handler_does_not_stop_the_others():
    reported = []
    bus = EventBus(on_error=lambda sub, err: reported.append((sub.pattern, str(err))))
    seen = []

    def broken(topic, payload):
        raise RuntimeError("boom")

    bad = bus.subscribe("x.>", broken)
    bus.subscribe("x.y", lambda t, p: seen.append(p))
    result = bus.publish("x.y", 42)
    assert seen == [42]
    assert result.delivered == 1
    assert [(s.id, str(e)) for s, e in result.errors] == [(bad.id, "boom")]
    assert reported == [("x.>", "boom")]
    assert EventBus().subscribe("q", broken).handler is broken
    assert len(EventBus().publish("q").errors) == 0


def test_handler_may_unsubscribe_others_during_publish():
    bus = EventBus()
    seen = []
    holder = {}
    bus.subscribe("t", lambda t, p: bus.unsubscribe(holder["second"]))
    holder["second"] = bus.subscribe("t", lambda t, p: seen.append("second"))
    assert bus.publish("t").delivered == 1
    assert seen == []
