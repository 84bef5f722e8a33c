//! Kernel symbols from `/proc/kallsyms`.

use super::Frame;

/// The running kernel's text symbols, sorted by address. Names live in one
/// string: a kernel has ~200k symbols, and a `String` each would cost
/// several megabytes of headers and allocator slack.
pub struct Kallsyms {
    /// (address, start of the name in `names`, its length).
    syms: Vec<(u64, u32, u32)>,
    names: String,
}

impl Kallsyms {
    /// Reads `/proc/kallsyms`. Addresses are zero when we lack
    /// CAP_SYSLOG/root (kptr_restrict); then there is nothing to resolve with.
    pub fn load() -> Option<Kallsyms> {
        // Streamed line by line: the file is ~10 MB of text, which need not
        // all be in memory at once.
        let f = std::fs::File::open("/proc/kallsyms").ok()?;
        let k = Kallsyms::from_lines(
            std::io::BufRead::lines(std::io::BufReader::new(f)).map_while(Result::ok),
        );
        (!k.syms.is_empty()).then_some(k)
    }

    /// Parses kallsyms text: `ffffffff81000000 T _stext [module]`. Only text
    /// symbols (t/T/w/W) are kept: samples only land in code.
    pub fn parse(text: &str) -> Kallsyms {
        Kallsyms::from_lines(text.lines())
    }

    fn from_lines<S: AsRef<str>>(lines: impl Iterator<Item = S>) -> Kallsyms {
        let mut names = String::new();
        let mut syms: Vec<(u64, u32, u32)> = lines
            .filter_map(|l| {
                let l = l.as_ref();
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                if addr == 0 || !matches!(kind, "t" | "T" | "w" | "W") {
                    return None;
                }
                let start = u32::try_from(names.len()).ok()?;
                names.push_str(name);
                Some((addr, start, u32::try_from(name.len()).ok()?))
            })
            .collect();
        syms.sort_unstable_by_key(|s| s.0);
        names.shrink_to_fit();
        Kallsyms { syms, names }
    }

    /// The lowest and highest symbol addresses, for the kernel mapping.
    pub fn range(&self) -> Option<(u64, u64)> {
        Some((self.syms.first()?.0, self.syms.last()?.0))
    }

    /// The function containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<Frame> {
        let i = self.syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
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
