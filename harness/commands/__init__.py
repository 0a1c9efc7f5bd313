"""Sub-commands of `harness`; each module registers one parser and its run(args) function."""
