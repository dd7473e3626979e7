"""What a run needs before it runs: GPU and host memory per process, and disk, predicted from the
config alone (no torch, no weights), and checked against what the machine has."""
