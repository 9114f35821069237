"""Input parsing: every bad value is refused with a message that says what is wrong."""

import pytest

from vzengine import InvalidInput, validate


@pytest.mark.parametrize("value", ["101", 101, " 4242 ", "999999999"])
def test_it_accepts_ctids(value):
    assert validate.ctid(value) == int(str(value).strip())


@pytest.mark.parametrize("value", ["abc", "-5", "99", "1000000000", "1e3", "", "101;rm"])
def test_it_refuses_bad_ctids(value):
    with pytest.raises(InvalidInput, match="invalid VE id"):
        validate.ctid(value)


@pytest.mark.parametrize("value", ["web1", "web-1.example.com", "a", "x" * 63])
def test_it_accepts_hostnames(value):
    assert validate.hostname(value) == value


@pytest.mark.parametrize("value", ["", "-web", "web-", "we_b", "a..b", "x" * 64, "bad host", "a/b", "é"])
def test_it_refuses_bad_hostnames(value):
    with pytest.raises(InvalidInput, match="invalid hostname"):
        validate.hostname(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("512M", 512 << 20), ("5G", 5 << 30), ("1.5G", int(1.5 * (1 << 30))), ("100", 100),
    ("2GiB", 2 << 30), ("64k", 64 << 10), (4096, 4096),
])
def test_it_parses_sizes(value, expected):
    assert validate.size(value) == expected


@pytest.mark.parametrize("value", ["-1G", "lots", "5X", "G", "1.2.3M", ""])
def test_it_refuses_bad_sizes(value):
    with pytest.raises(InvalidInput, match="invalid size"):
        validate.size(value)


def test_it_refuses_sizes_out_of_range():
    with pytest.raises(InvalidInput, match="at least"):
        validate.size("1M", minimum=64 << 20)
    with pytest.raises(InvalidInput, match="at most"):
        validate.size("900P", maximum=1 << 50)


@pytest.mark.parametrize("value", ["root", "root:", ":pw", "bad user:pw", "root:pw\nroot2:x"])
def test_it_refuses_bad_userpasswd(value):
    with pytest.raises(InvalidInput):
        validate.userpasswd(value)


def test_it_parses_userpasswd_with_colons_in_the_password():
    assert validate.userpasswd("root:a:b:c") == ("root", "a:b:c")


@pytest.mark.parametrize("value", ["Debian", "../etc", "a b", "", "deb/ian"])
def test_it_refuses_bad_template_names(value):
    with pytest.raises(InvalidInput, match="invalid template name"):
        validate.template_name(value)


def test_human_size():
    assert validate.human_size(512 << 20) == "512M"
    assert validate.human_size(1536 << 20) == "1.5G"
    assert validate.human_size(100) == "100"
