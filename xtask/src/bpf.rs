//! `cargo xtask build-ebpf`: builds the XDP object with the shared recipe and checks it.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{ebpf, setup};

pub fn build(root: &Path) -> Result<()> {
    setup::check()?;
    let object = ebpf::build(&root.join("lb-ebpf"), &root.join("target").join("bpf"))
        .map_err(|e| anyhow!("building the eBPF object: {e}"))?;
    let bytes = std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let sections =
        elf_section_names(&bytes).with_context(|| format!("{} is not a usable ELF object", object.display()))?;
    if !sections.iter().any(|s| s == ".BTF") {
        bail!(
            "{} has no .BTF section (sections: {}); the build must pass `-C link-arg=--btf`",
            object.display(),
            sections.join(" ")
        );
    }
    let btf: Vec<&str> = sections.iter().map(String::as_str).filter(|s| s.starts_with(".BTF")).collect();
    println!("eBPF object: {}", object.display());
    println!("size: {} bytes; BTF sections: {}", bytes.len(), btf.join(", "));
    Ok(())
}

/// Section names of a 64-bit little-endian ELF file (what the BPF target produces).
fn elf_section_names(elf: &[u8]) -> Result<Vec<String>> {
    ensure!(elf.len() >= 64 && elf[..4] == *b"\x7fELF", "no ELF header");
    ensure!(elf[4] == 2 && elf[5] == 1, "not a 64-bit little-endian ELF file");
    let u16_at = |o: usize| -> Result<usize> {
        let b = elf.get(o..o + 2).ok_or_else(|| anyhow!("truncated at {o}"))?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| -> Result<usize> {
        let b = elf.get(o..o + 4).ok_or_else(|| anyhow!("truncated at {o}"))?;
        Ok(u32::from_le_bytes(b.try_into()?) as usize)
    };
    let u64_at = |o: usize| -> Result<usize> {
        let b = elf.get(o..o + 8).ok_or_else(|| anyhow!("truncated at {o}"))?;
        Ok(usize::try_from(u64::from_le_bytes(b.try_into()?))?)
    };
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    ensure!(shentsize >= 0x40, "bad section header size {shentsize}");
    ensure!(shstrndx < shnum, "no section name table");
    let header = |i: usize| shoff + i * shentsize;
    let (str_off, str_size) = (u64_at(header(shstrndx) + 0x18)?, u64_at(header(shstrndx) + 0x20)?);
    let strtab = elf.get(str_off..str_off + str_size).ok_or_else(|| anyhow!("section name table out of range"))?;
    (0..shnum)
        .map(|i| {
            let name = u32_at(header(i))?;
            let rest = strtab.get(name..).ok_or_else(|| anyhow!("section name out of range"))?;
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_section_names_of_this_test_binary() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let names = elf_section_names(&exe).unwrap();
        assert!(names.iter().any(|n| n == ".text"), "{names:?}");
    }

    #[test]
    fn rejects_non_elf() {
        assert!(elf_section_names(b"not an elf file at all").is_err());
        assert!(elf_section_names(&[0u8; 64]).is_err());
    }
}
