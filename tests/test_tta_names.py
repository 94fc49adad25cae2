"""TTA domains are named by corruption and severity in the CLI table and on the plot axis."""

from __future__ import annotations

from cl_bench.report.domains import domain_names


def test_continual_gradual_clean_and_fallback() -> None:
    spec = {"corruptions": ["fog", "snow"], "severity": 5, "tta_setting": "continual"}
    assert domain_names(spec, [5, 5]) == ["fog s5", "snow s5"]
    assert domain_names({**spec, "insert_clean": True}, [5, 0, 5]) == ["fog s5", "clean", "snow s5"]
    gradual = {**spec, "tta_setting": "gradual", "gradual_severities": [1, 2, 1]}
    assert domain_names(gradual, [1, 2, 1, 1, 2, 1]) == ["fog s1", "fog s2", "fog s1", "snow s1", "snow s2", "snow s1"]
    assert domain_names({**spec, "tta_setting": "mixed_domains"}, [5]) == ["mixed s5"]
    # a spec that disagrees with the recorded severities, or none: the index, with the severity
    assert domain_names(spec, [5, 5, 5]) == ["exp 0 s5", "exp 1 s5", "exp 2 s5"]
    assert domain_names({}, [5, 0]) == ["exp 0 s5", "exp 1 clean"]
