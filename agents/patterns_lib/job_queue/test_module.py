import pytest

from {{module}} import JobQueue


def test_priority_then_submission_order():
    queue = JobQueue()
    ran = []
    queue.register("echo", ran.append)
    for name, priority in [("low", 5), ("high-1", 1), ("mid", 3), ("high-2", 1)]:
        queue.submit("echo", name, priority=priority)
    assert len(queue) == 4
    results = queue.run_all()
    assert ran == ["high-1", "high-2", "mid", "low"]
    assert [r.outcome for r in results] == ["done"] * 4
    assert len(queue) == 0 and queue.run_next() is None
    assert [j.payload for j in queue.completed] == ran


def test_retry_goes_behind_equal_priorities_then_succeeds():
    queue = JobQueue(max_attempts=3)
    calls = []

    def flaky(payload):
        calls.append(payload)
        if payload == "a" and calls.count("a") < 2:
            raise ConnectionError("down")
        return payload.upper()

    queue.register("work", flaky)
    a = queue.submit("work", "a")
    queue.submit("work", "b")
    results = queue.run_all()
    assert calls == ["a", "b", "a"]
    assert [(r.job.payload, r.outcome) for r in results] == [("a", "retry"), ("b", "done"), ("a", "done")]
    assert a.attempts == 2 and a.result == "A" and a.errors == ["ConnectionError: down"]


def test_dead_letter_after_max_attempts_and_requeue():
    queue = JobQueue(max_attempts=2)
    healthy = {"ok": False}

    def job(payload):
        if not healthy["ok"]:
            raise ValueError("bad input")
        return "fixed"

    queue.register("parse", job)
    submitted = queue.submit("parse", 1)
    assert [r.outcome for r in queue.run_all()] == ["retry", "dead"]
    assert queue.dead_letters == [submitted] and submitted.attempts == 2
    assert submitted.errors == ["ValueError: bad input"] * 2
    healthy["ok"] = True
    assert queue.requeue_dead(submitted.id) is submitted
    assert queue.dead_letters == [] and submitted.attempts == 0
    assert queue.run_next().outcome == "done" and submitted.result == "fixed"
    with pytest.raises(KeyError):
        queue.requeue_dead("job-99")


def test_unknown_kind_is_dead_lettered_at_once():
    queue = JobQueue(max_attempts=5)
    job = queue.submit("missing")
    result = queue.run_next()
    assert result.outcome == "dead" and job.attempts == 1
    assert "no handler registered for 'missing'" in job.errors[0]


def test_limit_and_ids():
    queue = JobQueue()
    queue.register("n", lambda p: p)
    jobs = [queue.submit("n", i) for i in range(3)]
    assert [j.id for j in jobs] == ["job-1", "job-2", "job-3"]
    assert len(queue.run_all(limit=2)) == 2 and len(queue) == 1


def test_invalid_max_attempts():
    with pytest.raises(ValueError):
        JobQueue(max_attempts=0)
