"""What torch's globals mean: the allowlist and the handlers that build tensors."""
