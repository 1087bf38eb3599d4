"""The training refactor leaves results unchanged: every stage's per-step losses (and logged loss parts, learning rate,
gradient norm) of a tiny run match those recorded before it (tests/golden_losses.py writes the fixture)."""

import json

import pytest

from golden_losses import FIXTURE, LOOP_NAMES, record

RELATIVE = 1e-5  # bit-identical on one machine; a reordered sum may move the last float32 digits


def test_every_stage_reproduces_the_recorded_losses(tmp_path):
    expected = json.loads(FIXTURE.read_text())
    assert sorted(expected) == sorted(LOOP_NAMES)
    got = record(tmp_path)
    assert sorted(got) == sorted(expected)
    for name, rows in expected.items():
        assert len(got[name]) == len(rows), name
        for want, have in zip(rows, got[name]):
            assert set(have) == set(want), (name, want["step"])
            for key, value in want.items():
                assert have[key] == pytest.approx(value, rel=RELATIVE, abs=1e-7), (name, want["step"], key)
