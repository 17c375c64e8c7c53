//! What the trace stage needs to know of a process: its name, and whether its runtime moves
//! work between OS threads (Go), which makes "the thread serving the request" meaningless.

use std::collections::HashMap;

pub trait ProcessInfo {
    fn name(&mut self, pid: u32) -> String;
    /// Goroutines move between threads: a thread says nothing about which request it serves.
    fn moves_work_between_threads(&mut self, pid: u32) -> bool;
}

/// The host's /proc: `$HOST_PROC` when set (the DaemonSet mounts the host's /proc at
/// /host/proc), else /proc.
pub fn proc_root() -> &'static std::path::Path {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        std::env::var_os("HOST_PROC")
            .filter(|v| !v.is_empty())
            .map_or_else(|| "/proc".into(), Into::into)
    })
}

/// A file of a process under the host's /proc.
pub fn proc_file(pid: u32, name: &str) -> std::path::PathBuf {
    proc_root().join(pid.to_string()).join(name)
}

/// A process's name as in /proc/PID/comm ("" when it is gone).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(proc_file(pid, "comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// Reads /proc, caching per pid (bounded: cleared when full).
#[derive(Default)]
pub struct ProcFs {
    cache: HashMap<u32, (String, bool)>,
}

const MAX_CACHED: usize = 4096;

impl ProcFs {
    fn get(&mut self, pid: u32) -> &(String, bool) {
        if self.cache.len() >= MAX_CACHED && !self.cache.contains_key(&pid) {
            self.cache.clear();
        }
        self.cache.entry(pid).or_insert_with(|| {
            let name = comm(pid);
            let go = std::fs::read(proc_file(pid, "exe")).is_ok_and(|elf| is_go_binary(&elf));
            (name, go)
        })
    }
}

impl ProcessInfo for ProcFs {
    fn name(&mut self, pid: u32) -> String {
        self.get(pid).0.clone()
    }

    fn moves_work_between_threads(&mut self, pid: u32) -> bool {
        self.get(pid).1
    }
}

/// A Go binary carries a `.go.buildinfo` (or `.note.go.buildid`) ELF section.
pub fn is_go_binary(elf: &[u8]) -> bool {
    section_names(elf).is_some_and(|names| {
        names
            .iter()
            .any(|n| n == ".go.buildinfo" || n == ".note.go.buildid")
    })
}

/// Section names of a 64-bit little-endian ELF file.
fn section_names(elf: &[u8]) -> Option<Vec<String>> {
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let strtab = shoff + shstrndx * shentsize;
    let str_off = u64_at(strtab + 0x18)? as usize;
    let mut names = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let name_off = u32::from_le_bytes(
            elf.get(shoff + i * shentsize..shoff + i * shentsize + 4)?
                .try_into()
                .ok()?,
        );
        let start = str_off + name_off as usize;
        let rest = elf.get(start..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_binary_is_told_from_others() {
        assert!(
            !is_go_binary(&std::fs::read("/proc/self/exe").unwrap()),
            "the test binary is Rust"
        );
        assert!(!is_go_binary(b"not an elf"));
        // Debian's Go toolchain itself is a Go binary (installed by cargo xtask test).
        if let Ok(go) = std::fs::canonicalize("/usr/bin/go").and_then(std::fs::read) {
            assert!(is_go_binary(&go));
        }
    }
}
