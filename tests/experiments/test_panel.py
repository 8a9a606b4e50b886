"""experiments/panel.py: the satellite-error models a correction is judged under."""
import dataclasses

import pytest

from experiments.panel import PANEL, panel_model
from precipfast.config import DegradationConfig


def test_every_member_changes_the_fit_where_it_says_and_nothing_else():
    fit = DegradationConfig()
    assert panel_model("fit", fit) == fit
    assert panel_model("clean", fit) == dataclasses.replace(fit, enabled=False)
    for name, (changes, why) in PANEL.items():
        assert len(why) > 30, f"{name} needs its reason"
        got = panel_model(name, fit)
        if changes:
            differ = {f.name for f in dataclasses.fields(fit) if getattr(got, f.name) != getattr(fit, f.name)}
            assert differ == {k for k, v in changes.items() if getattr(fit, k) != v}, name
    assert panel_model("under", fit).bias_a < 1 < panel_model("over", fit).bias_a
    assert panel_model("literature", fit).gamma_exp < 1


def test_an_unknown_member_is_named():
    with pytest.raises(ValueError, match="unknown panel member 'lucky'; the panel is fit, literature"):
        panel_model("lucky", DegradationConfig())
