//! Kernel symbols from `/proc/kallsyms`.

use std::collections::HashMap;

use super::Frame;

/// The running kernel's text symbols, sorted by address. Names live in one
/// string: a kernel has ~200k symbols, and a `String` each would cost
/// several megabytes of headers and allocator slack.
///
/// kallsyms gives no sizes, so a symbol is taken to reach the next one.
/// That is wrong where the next symbol belongs to other code: after the
/// core kernel's text (its `_etext` and `_einittext` markers end it), and
/// after the last symbol of a module, of the BPF programs or of the ftrace
/// trampolines, where whatever lies above (another module's data, JIT code
/// kallsyms does not list) would take that symbol's name. Those symbols get
/// an end of their own (see [`Kallsyms::ends`]).
pub struct Kallsyms {
    /// (address, start of the name in `names`, its length).
    syms: Vec<(u64, u32, u32)>,
    names: String,
    /// (index in `syms`, end address) of the symbols that do not reach the
    /// next one, by index.
    ends: Vec<(u32, u64)>,
}

/// Markers at the end of a run of kernel text: nothing runs from them on.
const TEXT_END_MARKERS: [&str; 2] = ["_etext", "_einittext"];

/// Where the last symbol of a module (with no size from `/proc/modules`),
/// of the BPF programs or of the ftrace trampolines is taken to end: the
/// page after the one it starts in (as perf bounds the last symbol).
fn page_after(addr: u64) -> u64 {
    (addr | 0xfff).saturating_add(1).saturating_add(0x1000)
}

impl Kallsyms {
    /// Reads `/proc/kallsyms`, and `/proc/modules` for where each module's
    /// memory ends. Addresses are zero when we lack CAP_SYSLOG/root
    /// (kptr_restrict); then there is nothing to resolve with.
    pub fn load() -> Option<Kallsyms> {
        // Streamed line by line: the file is ~10 MB of text, which need not
        // all be in memory at once.
        let f = std::fs::File::open("/proc/kallsyms").ok()?;
        let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
        let k = Kallsyms::from_lines(
            std::io::BufRead::lines(std::io::BufReader::new(f)).map_while(Result::ok),
            &modules_extent(&modules),
        );
        (!k.syms.is_empty()).then_some(k)
    }

    /// Parses kallsyms text: `ffffffff81000000 T _stext [module]`. Only text
    /// symbols (t/T/w/W) are kept: samples only land in code.
    pub fn parse(text: &str) -> Kallsyms {
        Kallsyms::from_lines(text.lines(), &HashMap::new())
    }

    /// `modules`: each module's (base, size), from `/proc/modules`.
    fn from_lines<S: AsRef<str>>(
        lines: impl Iterator<Item = S>,
        modules: &HashMap<String, (u64, u64)>,
    ) -> Kallsyms {
        let mut names = String::new();
        // Owners ("" for the core kernel) are interned: a few per kernel.
        let mut owners: Vec<String> = vec![String::new()];
        let mut syms: Vec<((u64, u32, u32), u16)> = lines
            .filter_map(|l| {
                let l = l.as_ref();
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                if addr == 0 || !matches!(kind, "t" | "T" | "w" | "W") {
                    return None;
                }
                let owner = it
                    .next()
                    .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
                    .unwrap_or("");
                let owner = match owners.iter().position(|o| o == owner) {
                    Some(i) => i,
                    None => {
                        owners.push(owner.to_owned());
                        owners.len() - 1
                    }
                };
                let start = u32::try_from(names.len()).ok()?;
                names.push_str(name);
                let sym = (addr, start, u32::try_from(name.len()).ok()?);
                Some((sym, u16::try_from(owner).ok()?))
            })
            .collect();
        syms.sort_unstable_by_key(|s| s.0 .0);
        names.shrink_to_fit();
        let name = |s: &(u64, u32, u32)| names.get(s.1 as usize..(s.1 + s.2) as usize);
        let mut ends = Vec::new();
        for (i, (sym, owner)) in syms.iter().enumerate() {
            let next_owner = syms.get(i + 1).map(|n| n.1);
            let end = if name(sym).is_some_and(|n| TEXT_END_MARKERS.contains(&n)) {
                sym.0
            } else if next_owner == Some(*owner) {
                continue;
            } else {
                let extent = modules
                    .get(&owners[usize::from(*owner)])
                    .map(|&(base, size)| base.saturating_add(size))
                    .filter(|&end| end > sym.0);
                extent.unwrap_or_else(|| page_after(sym.0))
            };
            if let Ok(i) = u32::try_from(i) {
                ends.push((i, end));
            }
        }
        Kallsyms {
            syms: syms.into_iter().map(|s| s.0).collect(),
            names,
            ends,
        }
    }

    /// The lowest and highest symbol addresses, for the kernel mapping.
    pub fn range(&self) -> Option<(u64, u64)> {
        Some((self.syms.first()?.0, self.syms.last()?.0))
    }

    /// The function containing `addr`, if any: the last symbol at or below
    /// it, when `addr` is below that symbol's end.
    pub fn lookup(&self, addr: u64) -> Option<Frame> {
        let i = self.syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        if let Some(&(_, end)) = u32::try_from(i)
            .ok()
            .and_then(|i| self.ends.binary_search_by_key(&i, |e| e.0).ok())
            .and_then(|j| self.ends.get(j))
        {
            if addr >= end {
                return None;
            }
        }
        let (_, start, len) = self.syms[i];
        let name = self.names.get(start as usize..(start + len) as usize)?;
        Some(Frame {
            function: name.to_owned(),
            file: String::new(),
            line: 0,
            start_line: 0,
            inlined: false,
        })
    }
}

/// Each loaded module's (base, size) from `/proc/modules` text (`name size
/// refcount deps state address`); modules whose address is hidden are left
/// out.
fn modules_extent(text: &str) -> HashMap<String, (u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = (*f.first()?).to_owned();
            let size = f.get(1)?.parse().ok()?;
            let base = u64::from_str_radix(f.get(5)?.strip_prefix("0x")?, 16).ok()?;
            (base != 0).then_some((name, (base, size)))
        })
        .collect()
}

/// The running kernel's text as runtime addresses: `_stext` and `_etext`.
///
/// A raw profile records these so that kernel frames can be named later
/// from a vmlinux whose symbols sit at link-time addresses: the KASLR slide
/// is runtime `_stext` minus the vmlinux's `_stext`. Only two symbols are
/// needed, so kallsyms is scanned without building the symbol table, and
/// the answer is kept: kernel text does not move while we run. `None` when
/// the addresses are hidden (kptr_restrict) or the symbols are missing.
pub fn text_range() -> Option<(u64, u64)> {
    static RANGE: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    *RANGE.get_or_init(|| {
        let f = std::fs::File::open("/proc/kallsyms").ok()?;
        text_range_from(std::io::BufReader::with_capacity(1 << 16, f))
    })
}

/// Finds `_stext` and `_etext` in kallsyms text, stopping at the later one.
/// Lines are compared as bytes: nearly all of them are other symbols, and
/// splitting each into fields would cost more than the kernel takes to
/// print them.
fn text_range_from(mut r: impl std::io::BufRead) -> Option<(u64, u64)> {
    let (mut stext, mut etext) = (None, None);
    let mut line = Vec::with_capacity(256);
    while stext.is_none() || etext.is_none() {
        line.clear();
        if r.read_until(b'\n', &mut line).ok()? == 0 {
            break;
        }
        let l = line.strip_suffix(b"\n").unwrap_or(&line);
        let slot = if l.ends_with(b" _stext") {
            &mut stext
        } else if l.ends_with(b" _etext") {
            &mut etext
        } else {
            continue;
        };
        let addr = l.split(|&b| b == b' ').next()?;
        *slot = std::str::from_utf8(addr)
            .ok()
            .and_then(|a| u64::from_str_radix(a, 16).ok())
            .filter(|&a| a != 0);
    }
    let (s, e) = (stext?, etext?);
    (s < e).then_some((s, e))
}

/// The running kernel's GNU build ID, from `/sys/kernel/notes`.
pub fn build_id() -> Option<String> {
    let notes = std::fs::read("/sys/kernel/notes").ok()?;
    let mut off = 0usize;
    // The file is a plain sequence of ELF notes: namesz, descsz, type, name, desc.
    while off + 12 <= notes.len() {
        let word = |o: usize| -> Option<usize> {
            let b = notes.get(o..o + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let (namesz, descsz, ty) = (word(off)?, word(off + 4)?, word(off + 8)?);
        let name_start = off + 12;
        let desc_start = name_start + namesz.div_ceil(4) * 4;
        let desc_end = desc_start.checked_add(descsz)?;
        let name = notes.get(name_start..name_start + namesz)?;
        if ty == 3 && name.starts_with(b"GNU") {
            return Some(crate::process::buildid::hex(
                notes.get(desc_start..desc_end)?,
            ));
        }
        off = desc_start + descsz.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_looks_up() {
        let k = Kallsyms::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 t do_thing\nffffffff81000200 D some_data\nffffffff81000300 T other [mod]\n0000000000000000 T hidden\n",
        );
        assert_eq!(k.lookup(0xffffffff81000150).unwrap().function, "do_thing");
        assert_eq!(k.lookup(0xffffffff81000250).unwrap().function, "do_thing");
        assert_eq!(k.lookup(0xffffffff81000300).unwrap().function, "other");
        assert!(k.lookup(0x1000).is_none());
        assert_eq!(k.range(), Some((0xffffffff81000000, 0xffffffff81000300)));
    }

    /// Addresses above the last symbol of a run of code are nobody's: not
    /// after the core kernel's text, not after a module's or the BPF
    /// programs' last symbol, not after the last symbol of all.
    #[test]
    fn lookups_stop_at_the_end_of_text_and_of_each_module() {
        let text = "\
ffffffff81000000 T _stext
ffffffff81000100 T schedule
ffffffff8220bb00 T last_core_fn
ffffffff8220bb08 T _etext
ffffffff83783000 T _sinittext
ffffffff837f88f0 T use_tpause_delay
ffffffff837f8910 T _einittext
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
ffffffffc0400000 t nf_hook_a\t[nf_tables]
ffffffffc0400800 t nf_hook_b\t[nf_tables]
ffffffffc0500000 t xfs_read\t[xfs]
ffffffffc0600040 t bpf_prog_1234_handler\t[bpf]
";
        let k = Kallsyms::parse(text);
        let name = |a: u64| k.lookup(a).map(|f| f.function);
        assert_eq!(name(0xffffffff8220bb04).as_deref(), Some("last_core_fn"));
        // Between the text and the init text: the _etext marker ends it.
        assert_eq!(name(0xffffffff8220bb08), None);
        assert_eq!(name(0xffffffff82400000), None);
        assert_eq!(
            name(0xffffffff837f8900).as_deref(),
            Some("use_tpause_delay")
        );
        assert_eq!(name(0xffffffff837f8910), None);
        // Within a module the next symbol bounds each one.
        assert_eq!(name(0xffffffffc04007ff).as_deref(), Some("nf_hook_a"));
        // A module's last symbol (no /proc/modules here): to the page after.
        assert_eq!(name(0xffffffffc0401fff).as_deref(), Some("nf_hook_b"));
        assert_eq!(name(0xffffffffc0402000), None);
        assert_eq!(
            name(0xffffffffc0201fff).as_deref(),
            Some("ftrace_trampoline")
        );
        assert_eq!(name(0xffffffffc0300000), None);
        // The last symbol of all.
        assert_eq!(
            name(0xffffffffc0600f00).as_deref(),
            Some("bpf_prog_1234_handler")
        );
        assert_eq!(name(0xffffffffc0700000), None);
        assert_eq!(name(u64::MAX), None);

        // With /proc/modules, a module's last symbol ends with its memory.
        let modules = modules_extent(
            "nf_tables 12288 0 - Live 0xffffffffc0400000\nxfs 65536 1 - Live 0xffffffffc0500000\nhidden 4096 0 - Live 0x0000000000000000\n",
        );
        assert_eq!(modules.len(), 2);
        let k = Kallsyms::from_lines(text.lines(), &modules);
        let name = |a: u64| k.lookup(a).map(|f| f.function);
        assert_eq!(name(0xffffffffc0402fff).as_deref(), Some("nf_hook_b"));
        assert_eq!(name(0xffffffffc0403000), None);
        assert_eq!(name(0xffffffffc050ffff).as_deref(), Some("xfs_read"));
        assert_eq!(name(0xffffffffc0510000), None);
    }

    #[test]
    fn text_range_needs_both_ends() {
        let text = "ffffffff81000000 T srso_alias\nffffffff81000000 T _stext\nffffffff81000100 t f\nffffffff82000000 T _etext\nffffffffa0000000 t m [mod]\n";
        assert_eq!(
            text_range_from(text.as_bytes()),
            Some((0xffffffff81000000, 0xffffffff82000000))
        );
        assert_eq!(text_range_from(&text.as_bytes()[..60]), None);
        let hidden = "0000000000000000 T _stext\n0000000000000000 T _etext\n";
        assert_eq!(text_range_from(hidden.as_bytes()), None);
        let live = text_range().expect("_stext and _etext in /proc/kallsyms");
        // Core kernel functions lie inside; the text is megabytes long.
        let k = Kallsyms::load().expect("/proc/kallsyms readable as root");
        let inside = |name: &str| {
            k.syms.iter().any(|s| {
                &k.names[s.1 as usize..(s.1 + s.2) as usize] == name
                    && (live.0..live.1).contains(&s.0)
            })
        };
        assert!(inside("schedule") && inside("ksys_write"), "{live:x?}");
        assert!(live.1 - live.0 > 1 << 20, "{live:x?}");
    }

    #[test]
    fn live_kallsyms_has_scheduler() {
        let k = Kallsyms::load().expect("/proc/kallsyms readable as root");
        let schedule = k
            .syms
            .iter()
            .find(|s| &k.names[s.1 as usize..(s.1 + s.2) as usize] == "schedule");
        assert_eq!(
            k.lookup(schedule.expect("schedule is a kernel symbol").0)
                .unwrap()
                .function,
            "schedule"
        );
        assert!(build_id().is_some_and(|id| id.len() >= 16));
    }
}
