from vistune.config import VisualConfig
from vistune.model.anyres import EncoderGeometry, plan_image


def test_reference_worked_examples():
    # worked SigLIP-384 examples of the anyres_max_9 rule (reference notes §1.3)
    g = EncoderGeometry(384, 14)
    v = VisualConfig()
    assert plan_image((2304, 2304), v, g).num_tokens == 7371
    assert plan_image((2304, 768), v, g).num_tokens == 7309
    assert plan_image((2304, 384), v, g).num_tokens == 5265
    assert plan_image((1152, 1152), v, g).num_tokens == 7371
