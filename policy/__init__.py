"""llmfleet's CrossGuard policy pack. The policies live in `policy.policies`; `__main__.py` serves them."""
