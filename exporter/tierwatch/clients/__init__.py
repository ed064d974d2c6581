"""One client per protocol, shared by the probes and the recovery actions."""
