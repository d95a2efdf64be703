"""The pickle layer: the opcode table, a restricted unpickler and the allowlist of globals."""
