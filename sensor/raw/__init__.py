"""The raw-socket stack: stealth and advanced modes (stcp, sudp, atcp, audp), and the kernel's tables.

``capture`` reads AF_INET/AF_INET6 raw sockets, ``bpf`` builds their kernel filters,
``packet`` parses and classifies what arrives, ``liveports`` and ``sockdiag`` read which
ports services use (doc/DESIGN.md §1, §7).
"""
