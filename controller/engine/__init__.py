"""The controller's pure decision core: rollout specs, the rollout state machine, analysis and the
counts it reads. No I/O, no clock: time comes in as ``now`` (design invariant 8)."""
