"""The arithmetic of a reseller's quota (vzpanel/resellers/quota.py): pure, no Django, no database."""

import subprocess
import sys
from pathlib import Path

from vzpanel.resellers.quota import Amounts, PerVE, Refusal, refusals, too_big_for, total, ve_amounts

REPO = Path(__file__).resolve().parents[2]
SMALL = PerVE(ram_mb=256, disk_gb=2, ipv4=1, ipv6=0)
QUOTA = Amounts(ves=3, ram_mb=1024, disk_gb=10, ipv4=3, ipv6=0)


def test_it_counts_a_ve_by_its_plan_and_the_addresses_it_holds_beyond_it():
    assert ve_amounts(SMALL) == Amounts(ves=1, ram_mb=256, disk_gb=2, ipv4=1, ipv6=0)
    assert ve_amounts(SMALL, held4=0) == ve_amounts(SMALL)  # the plan's address counts before it is taken
    assert ve_amounts(SMALL, held4=3, held6=2) == Amounts(ves=1, ram_mb=256, disk_gb=2, ipv4=3, ipv6=2)


def test_it_adds_and_subtracts_amounts():
    two = total([ve_amounts(SMALL), ve_amounts(SMALL)])
    assert two == Amounts(ves=2, ram_mb=512, disk_gb=4, ipv4=2)
    assert two - ve_amounts(SMALL) == ve_amounts(SMALL)
    assert total([]) == Amounts()


def test_a_change_that_fits_is_not_refused_up_to_the_last_unit():
    used = total([ve_amounts(SMALL)] * 2)
    assert refusals(QUOTA, used, ve_amounts(SMALL)) == []  # 3 VEs, 768 MB, 6 GB, 3 addresses: exactly in


def test_it_names_each_resource_beyond_the_quota_with_used_and_asked():
    used = total([ve_amounts(SMALL)] * 3)
    found = refusals(QUOTA, used, ve_amounts(SMALL))
    assert [r.name for r in found] == ["ves", "ipv4"]
    assert found[0] == Refusal("ves", limit=3, used=3, asked=1)
    assert found[0].message == "The reseller quota allows 3 VEs: 3 in use and this asks for 1 more (0 left)."
    assert found[1].message == ("The reseller quota allows 3 IPv4 addresses: 3 in use and this asks for 1 more "
                                "(0 left).")
    big = Refusal("ram_mb", limit=1024, used=768, asked=512)
    assert big.message == ("The reseller quota allows 1024 MB of RAM: 768 MB in use and this asks for 512 MB more "
                           "(256 MB left).")


def test_asking_for_less_or_nothing_is_never_refused_even_over_the_quota():
    over = Amounts(ves=5, ram_mb=4096, disk_gb=50, ipv4=5)  # an admin lowered the quota below the use
    assert refusals(QUOTA, over, Amounts()) == []
    assert refusals(QUOTA, over, Amounts(ram_mb=-256, ves=-1)) == []
    # a plan edit asking for more RAM but less disk is refused for the RAM only
    found = refusals(QUOTA, Amounts(ram_mb=1000, disk_gb=10), Amounts(ram_mb=100, disk_gb=-4))
    assert [r.name for r in found] == ["ram_mb"]
    assert "(24 MB left)" in found[0].message


def test_a_plan_whose_one_ve_exceeds_the_whole_quota_is_named():
    assert too_big_for(QUOTA, SMALL) == []
    assert too_big_for(QUOTA, PerVE(ram_mb=2048, disk_gb=20, ipv4=1, ipv6=1)) == [
        "One VE of this plan takes 2048 MB of RAM; the whole reseller quota is 1024 MB of RAM.",
        "One VE of this plan takes 20 GB of disk; the whole reseller quota is 10 GB of disk.",
        "One VE of this plan takes 1 IPv6 addresses; the whole reseller quota is 0 IPv6 addresses.",
    ]


def test_it_loads_no_django():
    code = ("import sys, vzpanel.resellers.quota; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
