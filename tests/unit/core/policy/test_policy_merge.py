"""Field-by-field merging: default <- namespace <- repository."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.core.policy.document import PolicyDocument, parse_data
from services.core.policy.merge import effective, merge


def test_a_lower_level_wins_and_unset_fields_inherit() -> None:
    default = parse_data({"scan": {"enabled": True, "severity_gate": "critical"}})
    ns = parse_data({"scan": {"severity_gate": "high", "ignore": ["CVE-1"]}, "retention": {"keep_last": 3}})
    repo = parse_data({"scan": {"severity_gate": "medium"}})
    got = effective(default, namespace=ns, repository=repo)
    assert got.scan.enabled is True  # from the default
    assert got.scan.severity_gate == "medium"  # the repository's
    assert got.scan.ignore == ["CVE-1"]  # the namespace's
    assert got.retention.keep_last == 3 and got.retention.untagged_after_days == 7
    assert got.signing == PolicyDocument().signing


def test_lists_replace_and_never_concatenate() -> None:
    ns = parse_data({"scan": {"ignore": ["CVE-1", "CVE-2"]}, "tags": {"immutable": ["v*"]}})
    repo = parse_data({"scan": {"ignore": []}, "tags": {"immutable": ["release-*"]}})
    got = effective(PolicyDocument(), namespace=ns, repository=repo)
    assert got.scan.ignore == [] and got.tags.immutable == ["release-*"]


def test_missing_levels_and_the_settings_default() -> None:
    default = PolicyDocument()
    assert effective(default, namespace=None, repository=None) == default
    # a default from the settings counts wholly, set or not
    changed_default = parse_data({"retention": {"untagged_after_days": 30}})
    got = effective(changed_default, namespace=parse_data({}), repository=None)
    assert got.retention.untagged_after_days == 30
    assert got.dump() == got.dump_all()


_SECTIONS: dict[str, dict[str, Any]] = {
    "scan": {"enabled": st.booleans(), "severity_gate": st.sampled_from(["none", "low", "high", "critical"]),
             "ignore": st.lists(st.sampled_from(["CVE-1", "CVE-2", "GHSA-x"]), max_size=3),
             "unscanned": st.sampled_from(["allow", "block"])},
    "tags": {"immutable": st.lists(st.sampled_from(["v*", "latest", "sha-*"]), max_size=3),
             "mutable": st.lists(st.sampled_from(["dev-*", "latest"]), max_size=2)},
    "retention": {"untagged_after_days": st.integers(0, 400), "keep_last": st.integers(0, 50)},
}


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, fields in _SECTIONS.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
            out[section] = {f: draw(fields[f]) for f in chosen}
    return out


@given(documents(), documents(), documents())
def test_each_field_comes_from_the_lowest_level_that_sets_it(d: dict[str, Any], n: dict[str, Any],
                                                             r: dict[str, Any]) -> None:
    got = merge(parse_data(d), parse_data(n), parse_data(r)).dump_all()
    base = PolicyDocument().dump_all()
    for section, fields in _SECTIONS.items():
        for name in fields:
            expected = next(
                (level[section][name] for level in (r, n, d) if name in level.get(section, {})),
                base[section][name],
            )
            assert got[section][name] == expected, (section, name)


@given(documents(), documents())
def test_merging_is_associative_over_levels(a: dict[str, Any], b: dict[str, Any]) -> None:
    base = PolicyDocument()
    once = merge(base, parse_data(a), parse_data(b))
    assert merge(merge(base, parse_data(a)), parse_data(b)) == once
    assert merge(once, parse_data(b)) == once  # applying the lowest level again changes nothing
