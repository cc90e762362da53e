"""Find a function's file offset in an ELF binary, for uprobes (what libbpf does internally).

Reads .symtab and .dynsym; a symbol's file offset is its address minus the load address of
the PT_LOAD segment that holds it, plus that segment's file offset.
"""

from __future__ import annotations

import struct


class ElfError(Exception):
    pass


def symbol_offset(path: str, symbol: str) -> int:
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"\x7fELF":
        raise ElfError(f"{path} is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError(f"{path}: only 64-bit little-endian ELF is supported")
    (e_phoff, e_shoff, _flags, _ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx) = \
        struct.unpack_from("<QQIHHHHHH", data, 0x20)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    found = None
    for sh in sections:
        sh_type, sh_offset, sh_size, sh_link, sh_entsize = sh[1], sh[4], sh[5], sh[6], sh[9]
        if sh_type not in (2, 11) or not sh_entsize:  # SHT_SYMTAB, SHT_DYNSYM
            continue
        strtab = sections[sh_link]
        for off in range(sh_offset, sh_offset + sh_size, sh_entsize):
            st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from("<IBBHQQ", data, off)
            if st_info & 0xF not in (2, 10) or st_shndx == 0 or not st_value:  # STT_FUNC, STT_GNU_IFUNC; defined
                continue
            start = strtab[4] + st_name
            end = data.index(b"\0", start)
            if data[start:end].decode(errors="replace") == symbol:
                found = st_value
                break
        if found is not None:
            break
    if found is None:
        raise ElfError(f"no function symbol {symbol!r} in {path}")
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = \
            struct.unpack_from("<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == 1 and p_vaddr <= found < p_vaddr + p_filesz:  # PT_LOAD
            return found - p_vaddr + p_offset
    raise ElfError(f"symbol {symbol!r} of {path} is in no loadable segment")
