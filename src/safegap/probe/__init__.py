"""Recording hidden states at decoder-layer outputs."""

from safegap.probe.record import Recording, last_token_index, position_mask, record

__all__ = ["Recording", "last_token_index", "position_mask", "record"]
