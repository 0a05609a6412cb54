"""In a run over many wheels, a member stored exactly as in the wheel verified just
before is not inflated again, nor hashed again under an equal RECORD row
(``wheelfile.reusing_payloads``): the verified contents are the same, and no
defect of the hostile corpus gets through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipfix import wheelfile, zipraw
from pipfix.errors import VerificationError

from badwheels import BASE, GLIBC, all_cases, base_bytes, with_member_flipped

EARLIER, LATER = "pip-23.0.1-py3-none-any.whl", "pip-23.2.1-py3-none-any.whl"


@pytest.fixture
def inflated(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the members zipraw inflates (it still does the inflating)."""
    names: list[str] = []
    real = zipraw.read_payload

    def counting(member: zipraw.RawMember) -> bytes:
        names.append(member.name)
        return real(member)

    monkeypatch.setattr(zipraw, "read_payload", counting)
    yield names


def test_consecutive_releases_share_stored_members(
    pinned_wheels: dict[str, Path], inflated: list[str]
) -> None:
    alone = wheelfile.verify(pinned_wheels[LATER])
    inflated_alone = len(inflated)
    with wheelfile.reusing_payloads():
        wheelfile.verify(pinned_wheels[EARLIER])
        inflated.clear()
        reused = wheelfile.verify(pinned_wheels[LATER])
    assert reused.contents == alone.contents
    assert dict(reused.records) == dict(alone.records)
    assert 0 < len(inflated) < inflated_alone // 2  # most members were not inflated again
    inflated.clear()
    wheelfile.verify(pinned_wheels[LATER])  # outside the block: nothing is reused
    assert len(inflated) == inflated_alone


def test_no_defect_of_the_corpus_hides_behind_a_good_wheel(tmp_path: Path) -> None:
    """Each hostile case is the base wheel with one thing wrong: verified just after
    the good base wheel, it is refused for the same reason as on its own."""
    good = tmp_path / BASE
    good.write_bytes(base_bytes())
    refused = 0
    for case in all_cases():
        path = tmp_path / case.kind / case.filename
        path.parent.mkdir()
        path.write_bytes(case.data)
        alone = _refusal(path)
        with wheelfile.reusing_payloads():
            wheelfile.verify(good)
            assert _refusal(path) == alone, case.kind
        refused += alone is not None
    assert refused > 20


def test_a_member_with_the_same_headers_but_other_data_is_inflated(tmp_path: Path) -> None:
    good = tmp_path / BASE
    good.write_bytes(base_bytes())
    damaged = tmp_path / "damaged" / BASE
    damaged.parent.mkdir()
    damaged.write_bytes(base_bytes())
    with_member_flipped(damaged, GLIBC)
    with wheelfile.reusing_payloads():
        wheelfile.verify(good)
        with pytest.raises(VerificationError, match=GLIBC):
            wheelfile.verify(damaged)


def _refusal(path: Path) -> str | None:
    try:
        wheelfile.verify(path)
    except VerificationError as exc:
        return exc.reason
    return None
