from appliance.stages.alert import AlertState


def test_hysteresis_raises_once_and_clears_below_the_lower_level():
    s = AlertState(clear_ratio=0.8)
    seq = [0.1, 0.5, 0.49, 0.45, 0.41, 0.39, 0.5, 0.2]
    changes = [s.update(p, threshold=0.5) for p in seq]
    # raised at 0.5; 0.49..0.41 stay raised (>= 0.4); cleared at 0.39; raised again at 0.5
    assert changes == [None, "raised", None, None, None, "cleared", "raised", "cleared"]


def test_probability_hovering_at_threshold_does_not_flap():
    s = AlertState(clear_ratio=0.8)
    changes = [s.update(p, 0.5) for p in [0.5, 0.48, 0.51, 0.47, 0.52]]
    assert changes.count("raised") == 1 and changes.count("cleared") == 0
