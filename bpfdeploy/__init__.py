"""bpfdeploy: declarative deployment of eBPF programs (validate, plan, apply, destroy)."""

__version__ = "0.1.0"
