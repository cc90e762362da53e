"""Libraries by name for uprobes, from recorded `ldconfig -p` output."""

from __future__ import annotations

from pathlib import Path

from bpfdeploy.libraries import find_library, looks_like_library_name, parse_ldconfig

LDCONFIG = """567 libs found in cache `/etc/ld.so.cache'
	libz3.so.4 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz3.so.4
	libz3.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libz3.so
	libz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1
	libz.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so
	libm.so.6 (libc6) => /lib32/libm.so.6
	libc.so.6 (libc6) => /lib32/libc.so.6
	libc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6
"""
ENTRIES = parse_ldconfig(LDCONFIG)


def test_names_resolve_to_this_abis_versioned_library():
    assert find_library("libc", ENTRIES, "x86_64") == Path("/lib/x86_64-linux-gnu/libc.so.6")
    assert find_library("libc.so.6", ENTRIES, "x86_64") == Path("/lib/x86_64-linux-gnu/libc.so.6")
    assert find_library("libz", ENTRIES, "x86_64") == Path("/lib/x86_64-linux-gnu/libz.so.1")  # not libz3
    assert find_library("libz3", ENTRIES, "x86_64") == Path("/lib/x86_64-linux-gnu/libz3.so.4")
    assert find_library("libz.so", ENTRIES, "x86_64") == Path("/lib/x86_64-linux-gnu/libz.so")  # exact


def test_another_abis_copy_is_never_taken():
    assert find_library("libm", ENTRIES, "x86_64") is None  # only /lib32 has it
    assert find_library("libnosuch", ENTRIES, "x86_64") is None


def test_paths_are_not_library_names():
    assert looks_like_library_name("libc") and looks_like_library_name("libssl.so.3")
    assert not looks_like_library_name("./libc") and not looks_like_library_name("/lib/x86_64-linux-gnu/libc.so.6")
    assert not looks_like_library_name("target")


def test_the_prepared_cache_stamps_the_linker_cache_when_a_uprobe_names_a_binary():
    from types import SimpleNamespace

    from bpfdeploy import prepared_cache

    def prepared(binary):
        att = SimpleNamespace(binary=binary, cgroup=None)
        manifest = SimpleNamespace(objects=(), attachments=(att,), pin_root_access=None, maps=(), programs=())
        return SimpleNamespace(manifest=manifest, built={})

    assert prepared_cache.LD_SO_CACHE in prepared_cache._inputs(prepared(Path("/lib/x86_64-linux-gnu/libc.so.6")))
    assert prepared_cache.LD_SO_CACHE not in prepared_cache._inputs(prepared(None))
