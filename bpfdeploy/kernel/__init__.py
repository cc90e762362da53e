"""Everything that talks to the kernel: the command runner, libbpf bindings, live reads, apply."""
