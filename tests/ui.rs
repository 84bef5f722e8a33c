//! `rprof-bpf report --http`: the browser UI, in a real browser (Debian's
//! headless Chromium over the DevTools protocol) against the real server
//! binary, on real profiles: Go's own runtime/pprof profiles
//! (`tests/fixtures/report/go-cpu.pb.gz`, `go-heap.pb.gz`) and one of ours
//! (`rprof-go.pb.gz`, with kernel frames and labels).
//!
//! The numbers on the page must be the terminal's: the top table is
//! compared cell for cell with `rprof-bpf report --top` (itself checked
//! against `go tool pprof` in tests/report.rs).

mod browser;
mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use browser::{png_stats, Chrome};
use harness::{rprof, stack_names};
use rprof_bpf::pprof::{self, Profile};

fn fixture(name: &str) -> PathBuf {
    harness::fixtures().join("report").join(name)
}

/// A running `rprof-bpf report --http 127.0.0.1:0 ...`; killed on drop.
struct Server {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Server::start_at("127.0.0.1:0", args)
    }

    fn start_at(addr: &str, args: &[&str]) -> Server {
        let mut child = rprof()
            .args(["report", "--http", addr])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting rprof-bpf report --http");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                    let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                    let _ = tx.send(port);
                }
            }
        });
        let err = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let Ok(port) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("the server did not start: {}", stderr.lock().unwrap());
        };
        Server {
            child,
            port,
            stderr,
        }
    }

    fn url(&self, query: &str) -> String {
        format!("http://127.0.0.1:{}/{query}", self.port)
    }

    /// GET `path`: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, body.to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rprof-bpf report --top --nodecount 0 FILE ARGS`: (header lines, rows
/// of [flat, flat%, sum%, cum, cum%, name]).
fn report_top(file: &Path, args: &[&str]) -> (Vec<String>, Vec<Vec<String>>) {
    let out = rprof()
        .arg("report")
        .arg(file)
        .args(["--top", "--nodecount", "0"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut header = Vec::new();
    let mut rows = Vec::new();
    let mut in_rows = false;
    for line in text.lines() {
        if !in_rows {
            if line.trim_start().starts_with("flat  flat%") {
                in_rows = true;
            } else {
                header.push(line.to_string());
            }
            continue;
        }
        let mut rest = line.trim_start();
        let mut row = Vec::new();
        for _ in 0..5 {
            let end = rest.find(char::is_whitespace).unwrap();
            row.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
        row.push(rest.to_string());
        rows.push(row);
    }
    (header, rows)
}

/// The page's top table: (header lines, rows as [`report_top`] gives them).
fn page_top(c: &Chrome) -> (Vec<String>, Vec<Vec<String>>) {
    let v = c.eval(
        "[document.getElementById('top-header').textContent.split('\\n'),
          [...document.querySelectorAll('#top tbody tr')].map(tr =>
            [...tr.cells].slice(0, 5).map(td => td.textContent).concat([
              tr.cells[5].querySelector('a.fn').textContent +
              (tr.cells[5].querySelector('.inl') ? tr.cells[5].querySelector('.inl').textContent : '')]))]",
    );
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let header = strings(&v[0]);
    let rows = v[1].as_array().unwrap().iter().map(strings).collect();
    (header, rows)
}

/// Asserts the page's top table is `report --top`'s, cell for cell.
fn assert_top_matches(c: &Chrome, file: &Path, args: &[&str]) -> usize {
    let (want_header, want) = report_top(file, args);
    let (header, rows) = page_top(c);
    assert_eq!(header, want_header, "header lines for {args:?}");
    assert!(!want.is_empty(), "report --top {args:?} shows no rows");
    assert_eq!(rows.len(), want.len(), "row count for {args:?}");
    for (i, (r, w)) in rows.iter().zip(&want).enumerate() {
        let w: Vec<String> = w.iter().map(|s| s.trim().to_string()).collect();
        assert_eq!(r, &w, "row {i} for {args:?}");
    }
    rows.len()
}

fn chrome() -> Chrome {
    Chrome::start()
}

#[test]
fn top_table_is_report_top_for_go_and_our_profiles() {
    let c = chrome();
    for name in ["go-cpu.pb.gz", "rprof-go.pb.gz"] {
        let file = fixture(name);
        let server = Server::start(&[file.to_str().unwrap()]);
        c.open(&server.url(""));
        // The landing page shows both the table and the flame graph.
        let rows = assert_top_matches(&c, &file, &[]);
        assert!(rows > 5, "{name}: {rows} rows");
        assert!(c.frames("flame").len() > 10, "{name}: no flame graph");
        println!("{name}: {rows} rows equal report --top");

        // Sorting by cum: the server reorders, cum descends.
        let cum = c.eval(
            "(() => { const th = document.querySelector('th[data-sort=cum]'); \
             th.scrollIntoView({block: 'center'}); return th.getBoundingClientRect().toJSON(); })()",
        );
        c.click(
            cum["x"].as_f64().unwrap() + 5.0,
            cum["y"].as_f64().unwrap() + 5.0,
        );
        c.wait_ready();
        assert!(c.query().contains("sort=cum"), "{}", c.query());
        let (_, rows) = page_top(&c);
        let pct: Vec<f64> = rows
            .iter()
            .map(|r| r[4].trim_end_matches('%').parse().unwrap())
            .collect();
        assert!(
            pct.windows(2).all(|w| w[0] >= w[1]),
            "cum% not descending: {pct:?}"
        );
    }
}

#[test]
fn filters_and_tags_in_the_url_give_report_top() {
    let c = chrome();
    let file = fixture("rprof-go.pb.gz");
    let server = Server::start(&[file.to_str().unwrap()]);
    for (query, args) in [
        (
            "?focus=main%5C.&hide=runtime",
            vec!["--focus", "main\\.", "--hide", "runtime"],
        ),
        (
            "?ignore=kallsyms&noinlines=1",
            vec!["--ignore", "kallsyms", "--noinlines"],
        ),
        ("?tf=tid%3D12902", vec!["--tagfocus", "tid=12902"]),
        (
            "?ti=tid%3D12898&si=samples",
            vec!["--tagignore", "tid=12898", "--sample-index", "samples"],
        ),
    ] {
        c.open(&server.url(query));
        assert_top_matches(&c, &file, &args);
        // The controls show the URL's filters.
        let tf = c.eval("document.getElementById('tf').value");
        if let Some(v) = args.iter().position(|a| *a == "--tagfocus") {
            assert_eq!(tf.as_str(), Some(args[v + 1]));
        }
    }
    // Typing a filter into the form puts it in the URL.
    c.open(&server.url(""));
    c.eval("(document.getElementById('focus').value = 'fib', document.getElementById('controls').requestSubmit(), 1)");
    c.wait_ready();
    assert!(c.query().contains("focus=fib"), "{}", c.query());
    assert_top_matches(&c, &file, &["--focus", "fib"]);
}

#[test]
fn clicking_a_frame_zooms_into_it() {
    let c = chrome();
    let server = Server::start(&[fixture("go-cpu.pb.gz").to_str().unwrap()]);
    c.open(&server.url("?view=flame"));
    let before = c.frames("flame");
    let root = before.iter().find(|f| f.depth == 0).unwrap().clone();
    // A frame well inside the graph, narrower than the whole.
    let target = before
        .iter()
        .filter(|f| f.name == "main.allocate")
        .min_by_key(|f| f.depth)
        .expect("main.allocate drawn")
        .clone();
    assert!(target.w < root.w * 0.6, "{target:?} vs {root:?}");
    let (x, y) = target.center();
    c.click(x, y);
    c.wait_ready();
    let q = c.query();
    assert!(
        q.contains("z=runtime.main") && q.contains("z=main.allocate"),
        "{q}"
    );
    let after = c.frames("flame");
    let zoomed = after
        .iter()
        .find(|f| f.name == "main.allocate" && f.depth == target.depth)
        .expect("the zoomed frame");
    // It now spans the whole width, and its callees are scaled with it.
    assert!(
        (zoomed.x - root.x).abs() < 1.0 && (zoomed.w - root.w).abs() < 1.0,
        "{zoomed:?}"
    );
    let child = after
        .iter()
        .filter(|f| f.depth == target.depth + 1)
        .max_by(|a, b| a.w.total_cmp(&b.w))
        .expect("a callee");
    let scale = root.w / target.value as f64;
    let want = child.value as f64 * scale;
    assert!(
        (child.w - want).abs() < 2.0,
        "callee {child:?}: want width {want}"
    );
    // Frames outside the zoomed one are gone; its ancestors stay above.
    assert!(!after.iter().any(|f| f.name == "main.spinInline (inline)"));
    assert!(after.iter().any(|f| f.ancestor && f.name == "runtime.main"));
    // The zoom is in the URL: a reload shows the same.
    let href = c.eval("location.href");
    c.open(href.as_str().unwrap());
    let again = c.frames("flame");
    assert!(again
        .iter()
        .any(|f| f.name == "main.allocate" && (f.w - root.w).abs() < 1.0));
    // Clicking the root zooms out.
    let r = again.iter().find(|f| f.depth == 0).unwrap().clone();
    let (x, y) = r.center();
    c.click(x, y);
    c.wait_ready();
    assert!(!c.query().contains("z="), "{}", c.query());
    assert!(c
        .frames("flame")
        .iter()
        .any(|f| f.name == "main.spinInline (inline)"));
}

/// The share of `p`'s value `index` in samples with a function matching
/// `re`, in percent.
fn matched_pct(p: &Profile, index: usize, re: &regex::Regex) -> f64 {
    let total: i64 = p.sample.iter().map(|s| s.value[index]).sum();
    let hit: i64 = p
        .sample
        .iter()
        .filter(|s| stack_names(p, s).iter().any(|n| re.is_match(n)))
        .map(|s| s.value[index])
        .sum();
    100.0 * hit as f64 / total as f64
}

#[test]
fn search_highlights_and_sums_matches() {
    let c = chrome();
    let file = fixture("go-cpu.pb.gz");
    let p = pprof::read_file(&file).unwrap();
    let server = Server::start(&[file.to_str().unwrap()]);
    c.open(&server.url(""));
    for pattern in ["main\\.fib", "allocate|viaPointer", "mallocgc"] {
        c.eval(&format!(
            "(() => {{ delete document.getElementById('matched').dataset.pct; \
             const s = document.getElementById('search'); s.value = {}; \
             s.dispatchEvent(new Event('input')); return 1; }})()",
            serde_json::to_string(pattern).unwrap()
        ));
        // The search is debounced; wait for its answer.
        let mut shown = serde_json::Value::Null;
        for _ in 0..400 {
            std::thread::sleep(Duration::from_millis(50));
            if c.eval("document.body.dataset.state").as_str() == Some("ready") {
                shown = c.eval("document.getElementById('matched').dataset.pct || null");
                if !shown.is_null() {
                    break;
                }
            }
        }
        let shown: f64 = shown
            .as_str()
            .unwrap_or_else(|| panic!("no match total for {pattern}"))
            .trim_end_matches('%')
            .parse()
            .unwrap();
        let want = matched_pct(&p, 1, &regex::Regex::new(pattern).unwrap());
        assert!(
            (shown - want).abs() < 0.006,
            "{pattern}: page {shown}% vs {want:.3}%"
        );
        println!("search {pattern}: {shown}% (expected {want:.3}%)");
        // Matching frames are drawn highlighted, the others are not.
        let frames = c.frames("flame");
        let re = regex::Regex::new(pattern).unwrap();
        let hit = frames
            .iter()
            .filter(|f| f.matched)
            .max_by(|a, b| a.w.total_cmp(&b.w))
            .expect("a highlighted frame");
        assert!(re.is_match(&hit.name), "{hit:?}");
        assert!(frames
            .iter()
            .all(|f| f.matched == (f.depth > 0 && re.is_match(&f.name))));
        let (x, y) = hit.center();
        let [r, g, b] = c.pixel("flame", x, y - 5.0);
        assert!(
            r > 200 && g < 100 && b > 160,
            "{pattern}: highlight drawn as {r},{g},{b}"
        );
    }
}

#[test]
fn heap_profile_switches_between_its_four_sample_types() {
    let c = chrome();
    let file = fixture("go-heap.pb.gz");
    let server = Server::start(&[file.to_str().unwrap()]);
    c.open(&server.url(""));
    let options = c.eval("[...document.getElementById('si').options].map(o => o.value)");
    assert_eq!(
        options,
        serde_json::json!([
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ])
    );
    assert_eq!(c.eval("document.getElementById('si').value"), "inuse_space");
    assert_top_matches(&c, &file, &[]);
    for ty in ["alloc_space", "alloc_objects", "inuse_objects"] {
        c.eval(&format!(
            "(() => {{ const s = document.getElementById('si'); s.value = '{ty}'; \
             s.dispatchEvent(new Event('change')); return 1; }})()"
        ));
        std::thread::sleep(Duration::from_millis(100));
        c.wait_ready();
        assert!(c.query().contains(&format!("si={ty}")), "{}", c.query());
        assert_top_matches(&c, &file, &["--sample-index", ty]);
        let root = c
            .frames("flame")
            .into_iter()
            .find(|f| f.depth == 0)
            .unwrap();
        println!("{ty}: flame graph root {} (root frame value)", root.value);
    }
}

/// `go-cpu.pb.gz` with every sample through `main.direct` 4 times heavier.
fn grown_profile(dir: &Path) -> PathBuf {
    let mut p = pprof::read_file(&fixture("go-cpu.pb.gz")).unwrap();
    let q = p.clone();
    for s in &mut p.sample {
        if stack_names(&q, s).iter().any(|n| n == "main.direct") {
            for v in &mut s.value {
                *v *= 4;
            }
        }
    }
    let out = dir.join("grown.pb.gz");
    std::fs::write(&out, pprof::encode_gzip(&p)).unwrap();
    out
}

#[test]
fn diff_colours_what_grew_red_and_what_shrank_blue() {
    let c = chrome();
    let dir = tempfile::tempdir().unwrap();
    let new = grown_profile(dir.path());
    let base = fixture("go-cpu.pb.gz");
    let server = Server::start(&[new.to_str().unwrap(), "--diff-base", base.to_str().unwrap()]);
    c.open(&server.url(""));
    assert_top_matches(&c, &new, &["--diff-base", base.to_str().unwrap()]);
    let colour = |name: &str| {
        let f = c
            .frames("flame")
            .into_iter()
            .filter(|f| f.name == name)
            .max_by(|a, b| a.w.total_cmp(&b.w))
            .unwrap_or_else(|| panic!("no frame {name}"));
        let (x, y) = f.center();
        (c.pixel("flame", x, y - 5.0), f)
    };
    // Absolute: main.direct grew (red); main.fib did not change (grey).
    let ([r, g, b], f) = colour("main.direct");
    assert!(f.value == 4 * f.base && f.base > 0, "{f:?}");
    assert!(
        r > 240 && g < 120 && b < 120,
        "main.direct drawn {r},{g},{b}"
    );
    let ([r, g, b], f) = colour("main.fib");
    assert_eq!(f.value, f.base);
    assert!(r == g && g == b, "unchanged main.fib drawn {r},{g},{b}");
    // Normalized: the total is the base's, so what did not grow shrank.
    c.eval("(document.getElementById('norm').checked = true, document.getElementById('norm').dispatchEvent(new Event('change')), 1)");
    std::thread::sleep(Duration::from_millis(100));
    c.wait_ready();
    assert!(c.query().contains("norm=1"), "{}", c.query());
    assert_top_matches(
        &c,
        &new,
        &["--diff-base", base.to_str().unwrap(), "--normalize"],
    );
    let ([r, g, b], _) = colour("main.fib");
    assert!(
        b > 240 && r < 200 && r < g,
        "shrunk main.fib drawn {r},{g},{b}"
    );
    let ([r, g, b], _) = colour("main.direct");
    assert!(
        r > 240 && g < 200 && b < 200,
        "grown main.direct drawn {r},{g},{b}"
    );
}

#[test]
fn callers_callees_and_source_views() {
    let c = chrome();
    let dir = tempfile::tempdir().unwrap();
    // Copies of the Go profile whose main.go is where we have it, and
    // where nobody has it.
    let main_go = fixture("goprog/main.go");
    let moved = |to: &str, name: &str| {
        let mut p = pprof::read_file(&fixture("go-cpu.pb.gz")).unwrap();
        for s in p.string_table.iter_mut() {
            if s.ends_with("goprog/main.go") {
                *s = to.to_string();
            }
        }
        let file = dir.path().join(name);
        std::fs::write(&file, pprof::encode_gzip(&p)).unwrap();
        file
    };
    let file = moved(main_go.to_str().unwrap(), "local.pb.gz");
    let elsewhere = moved("/nonexistent/goprog/main.go", "elsewhere.pb.gz");
    let server = Server::start(&[file.to_str().unwrap()]);
    c.open(&server.url(""));
    // The function's name in the top table leads to its callers/callees.
    let link = c.eval(
        "(() => { const a = [...document.querySelectorAll('#top a.fn')].find(a => a.textContent === 'main.allocate'); \
         a.scrollIntoView({block: 'center'}); return a.getBoundingClientRect().toJSON(); })()",
    );
    c.click(
        link["x"].as_f64().unwrap() + 4.0,
        link["y"].as_f64().unwrap() + 4.0,
    );
    c.wait_ready();
    assert!(c.query().contains("view=peek") && c.query().contains("fn=main.allocate"));
    let names = |table: &str| -> Vec<String> {
        c.eval(&format!(
            "[...document.querySelectorAll('#{table} tbody td:first-child')].map(t => t.textContent)"
        ))
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
    };
    assert_eq!(names("peek-callers"), ["main.main"]);
    assert!(names("peek-callees").contains(&"runtime.makeslice".to_string()));
    let callees = c.frames("peek-callees-flame");
    assert!(callees
        .iter()
        .any(|f| f.depth == 1 && f.name == "main.allocate"));
    let callers = c.frames("peek-callers-flame");
    assert!(callers
        .iter()
        .any(|f| f.depth == 2 && f.name == "main.main"));

    // Source: per-line values, the text from the file, the hot lines'
    // flat adding up to the function's flat in the top table.
    c.open(&server.url("?view=source&fn=main.fib"));
    let lines = c.eval(
        "[...document.querySelectorAll('.source-file tr.hot')].map(tr => [...tr.cells].map(td => td.textContent))",
    );
    let lines = lines.as_array().unwrap();
    assert!(!lines.is_empty());
    let src = std::fs::read_to_string(&main_go).unwrap();
    let src: Vec<&str> = src.lines().collect();
    let mut flat_ms = 0.0;
    for l in lines {
        let n: usize = l[2].as_str().unwrap().parse().unwrap();
        assert_eq!(l[3].as_str().unwrap(), src[n - 1], "line {n}");
        let flat = l[0].as_str().unwrap();
        if !flat.is_empty() {
            flat_ms += flat.trim_end_matches('s').parse::<f64>().unwrap() * 1000.0;
        }
    }
    let (_, top) = report_top(&file, &[]);
    let fib = top.iter().find(|r| r[5] == "main.fib").unwrap();
    let want = fib[0].trim_end_matches('s').parse::<f64>().unwrap() * 1000.0;
    assert!(
        (flat_ms - want).abs() < 0.5,
        "lines add to {flat_ms} ms, top says {want} ms"
    );
    assert!(c
        .eval("document.querySelector('.source-missing') === null")
        .as_bool()
        .unwrap());

    // Where the file is not here, the values come without the text.
    let server2 = Server::start(&[elsewhere.to_str().unwrap()]);
    c.open(&server2.url("?view=source&fn=main.fib"));
    let missing = c.eval("document.querySelector('.source-missing').textContent");
    assert!(
        missing
            .as_str()
            .unwrap()
            .contains("/nonexistent/goprog/main.go"),
        "{missing}"
    );
    let values = c.eval("document.querySelectorAll('.source-file tr.hot').length");
    assert_eq!(values.as_u64(), Some(lines.len() as u64));
}

#[test]
fn screenshot_of_the_flame_graph_is_not_blank() {
    let c = chrome();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[fixture("rprof-go.pb.gz").to_str().unwrap()]);
    c.open(&server.url("?view=flame&search=main%5C.mix"));
    let png = c.screenshot();
    let path = dir.path().join("flame.png");
    std::fs::write(&path, &png).unwrap();
    let (mean, var, w, h) = png_stats(&png, None);
    println!(
        "{}: {w}x{h}, {} bytes, grey mean {mean:.1}, variance {var:.1}",
        path.display(),
        png.len()
    );
    assert!(w >= 800 && h >= 600, "{w}x{h}");
    // A blank (or single-colour) page has a variance near 0. The flame
    // graph's own area is checked too, so the page's chrome cannot pass
    // for it.
    assert!(var > 200.0, "screenshot looks blank: variance {var}");
    let r = c.eval(
        "(() => { const r = document.querySelector('#flame canvas').getBoundingClientRect(); \
         return [r.left, r.top, r.width, Math.min(r.height, innerHeight - r.top)].map(Math.floor); })()",
    );
    let r: Vec<u32> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let (fmean, fvar, _, _) = png_stats(&png, Some((r[0], r[1], r[2], r[3])));
    println!("flame graph area {r:?}: grey mean {fmean:.1}, variance {fvar:.1}");
    assert!(fvar > 200.0, "the flame graph looks blank: variance {fvar}");
    // `UI_SCREENSHOT=path` keeps it (the README's picture is made so).
    if let Some(keep) = std::env::var_os("UI_SCREENSHOT") {
        std::fs::copy(&path, keep).unwrap();
    }
}

#[test]
fn bad_queries_get_400_and_the_page_needs_nothing_from_outside() {
    let server = Server::start(&[fixture("go-heap.pb.gz").to_str().unwrap()]);
    let (code, meta) = server.get("/api/meta");
    assert_eq!(code, 200, "{meta}");
    let snap = serde_json::from_str::<serde_json::Value>(&meta).unwrap()["snap"]
        .as_str()
        .unwrap()
        .to_string();
    for q in [
        "top?si=bogus",
        "top?si=9",
        "top?focus=(",
        "top?hide=%5B",
        "top?tf=thread%3D(",
        "top?noinlines=2",
        "top?sort=sideways",
        "flame?w=abc",
        "flame?w=0",
        "flame?w=100000",
        "flame?search=(",
        "top?snap=x",
        "peek",
        "source",
    ] {
        let (code, body) = server.get(&format!("/api/{q}"));
        assert_eq!(code, 400, "{q}: {body}");
        let err = serde_json::from_str::<serde_json::Value>(&body).unwrap();
        assert!(!err["error"].as_str().unwrap().is_empty(), "{q}: {body}");
    }
    let (code, _) = server.get("/api/nonsense");
    assert_eq!(code, 404);
    let (code, body) = server.get("/api/top?snap=999");
    assert_eq!(code, 404, "{body}");
    let (code, body) = server.get("/api/peek?fn=no.such.function");
    assert_eq!(code, 404, "{body}");
    let (code, _) = server.get(&format!("/api/top?snap={snap}&si=alloc_space"));
    assert_eq!(code, 200);
    // The page loads nothing from elsewhere, and says so to the browser.
    for asset in ["/", "/app.js", "/app.css"] {
        let (code, body) = server.get(asset);
        assert_eq!(code, 200);
        for bad in ["http://", "https://", "//cdn", "@import"] {
            assert!(!body.contains(bad), "{asset} mentions {bad}");
        }
    }
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(s, "GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).unwrap();
    assert!(head
        .to_ascii_lowercase()
        .contains("content-security-policy: default-src 'none'"));
}

#[test]
fn unreadable_files_and_addresses_are_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pb.gz");
    std::fs::write(&junk, b"this is not a profile").unwrap();
    let good = fixture("go-cpu.pb.gz");
    for (args, names) in [
        (vec![junk.to_str().unwrap()], junk.to_str().unwrap()),
        (
            vec![
                good.to_str().unwrap(),
                "--diff-base",
                junk.to_str().unwrap(),
            ],
            junk.to_str().unwrap(),
        ),
        (vec!["/nonexistent/cpu.pb.gz"], "/nonexistent/cpu.pb.gz"),
    ] {
        let out = rprof()
            .args(["report", "--http", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            out.stdout.is_empty(),
            "served nothing: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // A bad address is a clear error too.
    let out = rprof()
        .args([
            "report",
            "--http",
            "nowhere:notaport",
            good.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere:notaport"));
    // All interfaces: allowed, with a warning.
    let server = Server::start_at("0.0.0.0:0", &[good.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    let log = server.stderr.lock().unwrap().clone();
    assert!(log.contains("reachable from other machines"), "{log}");
}
