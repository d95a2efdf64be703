"""The hostile corpus (``tests.support.adversarial``) and resource-limit tests: no torch."""
