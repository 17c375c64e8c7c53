//! Reads struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux), so
//! the kernel programs never carry one kernel's struct layout. Only what the socket-layer path
//! needs: find a struct by name, then a member by name (through anonymous members), and
//! whether a kernel function exists (its `FUNC` entry: the target of fentry/kprobes).

use std::collections::HashMap;

use anyhow::{Context as _, anyhow, bail};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;

struct Member {
    name: u32,
    type_id: u32,
    /// Bit offset (for bitfield structs the low 24 bits).
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    members: Vec<Member>,
}

pub struct Btf {
    types: Vec<Type>, // index = type id - 1
    strings: Vec<u8>,
    by_name: HashMap<String, usize>,
    functions: std::collections::HashSet<String>,
}

impl Btf {
    pub fn from_sys_fs() -> anyhow::Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| {
            format!("reading {path}: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
        })?;
        if data.is_empty() {
            bail!("{path} is empty: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF)");
        }
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    pub fn parse(data: &[u8]) -> anyhow::Result<Self> {
        let u16_at = |o: usize| {
            data.get(o..o + 2)
                .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
        };
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        if u16_at(0) != Some(BTF_MAGIC) {
            bail!("not little-endian BTF");
        }
        let hdr_len = u32_at(4).context("short header")? as usize;
        let type_off = u32_at(8).context("short header")? as usize;
        let type_len = u32_at(12).context("short header")? as usize;
        let str_off = u32_at(16).context("short header")? as usize;
        let str_len = u32_at(20).context("short header")? as usize;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("string section out of range")?
            .to_vec();
        let mut types = Vec::new();
        let mut at = hdr_len + type_off;
        let end = at + type_len;
        while at < end {
            let name = u32_at(at).context("truncated type")?;
            let info = u32_at(at + 4).context("truncated type")?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31;
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,             // int, var, decl_tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => vlen * 12, // struct, union, datasec, enum64
                6 | 13 => vlen * 8,           // enum, func_proto
                2 | 7..=12 | 16 | 18 => 0,
                other => bail!("unknown BTF kind {other}"),
            };
            let mut members = Vec::new();
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for m in 0..vlen {
                    let o = at + m * 12;
                    let offset = u32_at(o + 8).context("truncated member")?;
                    members.push(Member {
                        name: u32_at(o).context("truncated member")?,
                        type_id: u32_at(o + 4).context("truncated member")?,
                        bit_offset: if kind_flag == 1 {
                            offset & 0x00ff_ffff
                        } else {
                            offset
                        },
                    });
                }
            }
            types.push(Type {
                name,
                kind,
                members,
            });
            at += extra;
        }
        let mut btf = Self {
            types,
            strings,
            by_name: HashMap::new(),
            functions: Default::default(),
        };
        for (i, t) in btf.types.iter().enumerate() {
            if t.name == 0 {
                continue;
            }
            if t.kind == KIND_STRUCT {
                let name = btf.string(t.name).to_owned();
                btf.by_name.entry(name).or_insert(i);
            } else if t.kind == KIND_FUNC {
                btf.functions.insert(btf.string(t.name).to_owned());
            }
        }
        Ok(btf)
    }

    /// Does the kernel have a function of this name (not inlined away)?
    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains(name)
    }

    /// Byte offset of `member` in `struct name`.
    pub fn member_offset(&self, name: &str, member: &str) -> anyhow::Result<u32> {
        let idx = *self
            .by_name
            .get(name)
            .ok_or_else(|| anyhow!("struct {name} not in the kernel's BTF"))?;
        let bits = self
            .find(idx, member, 0)
            .ok_or_else(|| anyhow!("struct {name} has no member {member} in the kernel's BTF"))?;
        if bits % 8 != 0 {
            bail!("{name}.{member} is a bitfield");
        }
        Ok(bits / 8)
    }

    fn find(&self, idx: usize, member: &str, base: u32) -> Option<u32> {
        let t = self.types.get(idx)?;
        for m in &t.members {
            if m.name != 0 && self.string(m.name) == member {
                return Some(base + m.bit_offset);
            }
        }
        // Anonymous struct/union members (possibly behind typedefs/modifiers): look inside.
        for m in t.members.iter().filter(|m| m.name == 0) {
            let inner = self.types.get((m.type_id as usize).checked_sub(1)?)?;
            if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                && let Some(found) = self.find(m.type_id as usize - 1, member, base + m.bit_offset)
            {
                return Some(found);
            }
        }
        None
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A BTF blob with `struct s { int a; union { int b; int c; }; int d; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0c\0d\0";
        let name = |s: &str| {
            strings
                .windows(s.len() + 1)
                .position(|w| &w[..s.len()] == s.as_bytes() && w[s.len()] == 0)
                .unwrap() as u32
        };
        let mut types = Vec::new();
        let mut push = |v: &[u32]| {
            v.iter()
                .for_each(|x| types.extend_from_slice(&x.to_le_bytes()))
        };
        push(&[name("int"), 1 << 24, 4, 32]); // [1] int
        push(&[0, (5 << 24) | 2, 4]); // [2] anonymous union { b, c }
        push(&[name("b"), 1, 0, name("c"), 1, 0]);
        push(&[name("s"), (4 << 24) | 3, 12]); // [3] struct s
        push(&[name("a"), 1, 0, 0, 2, 32, name("d"), 1, 64]);
        blob(&types, strings)
    }

    /// A BTF blob: its header, then `types` and `strings` as given.
    pub(crate) fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [
            0xeb9f_u16.to_le_bytes().as_slice(),
            &[1, 0],
            &24u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &(types.len() as u32).to_le_bytes(),
            &(types.len() as u32).to_le_bytes(),
            &(strings.len() as u32).to_le_bytes(),
        ] {
            out.extend_from_slice(v);
        }
        out.extend_from_slice(types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn member_offsets_are_found_directly_and_through_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("s", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("s", "c").unwrap(), 4);
        assert_eq!(btf.member_offset("s", "d").unwrap(), 8);
        assert!(
            btf.member_offset("s", "zz")
                .unwrap_err()
                .to_string()
                .contains("no member zz")
        );
        assert!(
            btf.member_offset("t", "a")
                .unwrap_err()
                .to_string()
                .contains("struct t")
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 0]).is_err());
    }

    #[test]
    fn the_running_kernel_has_tcp_sock_sequence_counters() {
        // Readable without root; skipped only where the kernel has no BTF at all.
        let Ok(btf) = Btf::from_sys_fs() else { return };
        let copied = btf.member_offset("tcp_sock", "copied_seq").unwrap();
        let write = btf.member_offset("tcp_sock", "write_seq").unwrap();
        assert!(copied > 0 && write > 0 && copied != write);
        assert!(btf.has_function("tcp_sendmsg"));
        assert!(!btf.has_function("no_such_kernel_function"));
    }
}
