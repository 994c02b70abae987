from {{module}} import Policy, Report, character_classes, check, longest_repeat, longest_sequence


def test_a_good_and_a_strong_password():
    good = check("Correct7Horse9Battery")
    assert good.ok and good.problems == () and good.strength == "good"
    strong = check("Tr0ub4dor&3-Horse-Battery")
    assert strong.ok and strong.strength == "strong"


def test_too_short_is_explained():
    report = check("Ab1!x")
    assert not report.ok and report.strength == "weak"
    assert report.problems == ("use at least 12 characters (this has 5)",)


def test_too_long():
    report = check("Ab1-" * 40)
    assert "use at most 128 characters" in report.problems


def test_missing_character_classes_are_named():
    report = check("onlylowercaseletters")
    assert report.problems == ("mix at least 3 of lowercase, uppercase, digit, symbol (add: digit, symbol, uppercase)",)
    assert check("onlylowercaseletters", Policy(min_classes=1)).ok


def test_banned_words_with_substitutions():
    report = check("My-P@ssw0rd-Rules9")
    assert report.problems == ("avoid common words such as 'password'",)
    assert not check("Dragon!Mountain22").ok
    assert check("Dragon!Mountain22", Policy(banned_words=frozenset())).ok


def test_personal_words():
    assert not check("Hello-Ada-Lovelace1", personal=["ada.l@example.com", "Lovelace"]).ok
    assert check("Hello-Ada-Lovelace1", personal=["ad", "grace"]).ok


def test_repetition_and_sequences():
    assert check("Xq7!zzzzMountain").problems == ("do not repeat a character more than 3 times in a row",)
    assert check("Xq7!zzzMountain").ok
    assert check("Mount-12345-ain!").problems == ("avoid sequences longer than 4 such as 'abcde' or '12345'",)
    assert not check("Mount-edcba-ain!9").ok
    assert check("Mount-1234-ain!").ok


def test_several_problems_at_once():
    report = check("aaaa")
    assert len(report.problems) == 3


def test_helpers():
    assert character_classes("aB3$") == {"lowercase", "uppercase", "digit", "symbol"}
    assert character_classes("é") == {"symbol"}
    assert character_classes("") == set()
    assert longest_repeat("") == 0 and longest_repeat("abbbc") == 3
    assert longest_sequence("") == 0 and longest_sequence("x") == 1
    assert longest_sequence("qwert") == 5 and longest_sequence("9876") == 4 and longest_sequence("aMbE") == 1


def test_report_holds_no_password():
    report = check("Secret-Value-1234x")
    assert isinstance(report, Report)
    assert all("Secret-Value" not in problem for problem in report.problems)
    assert "Secret-Value-1234x" not in repr(report)
