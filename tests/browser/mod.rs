//! A real browser for the UI tests: Debian's Chromium, headless, driven
//! through the DevTools protocol (`headless_chrome`). It runs with a fresh
//! profile directory and everything that would reach the network off
//! (this machine has none, and background requests otherwise fail loudly).

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use headless_chrome::browser::tab::point::Point;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

/// Where Debian puts Chromium (`cargo xtask deps` installs it).
const CHROMIUM: &str = "/usr/bin/chromium";

/// The viewport the tests lay pages out in.
pub const WIDTH: u32 = 1400;
pub const HEIGHT: u32 = 1000;

/// A headless Chromium with one tab.
pub struct Chrome {
    // Declared before the directory so that the browser stops first.
    pub tab: Arc<Tab>,
    browser: Browser,
    _profile: tempfile::TempDir,
}

impl Chrome {
    /// Starts Chromium. A missing browser is a broken install (`cargo xtask
    /// deps` installs it), so it fails the test rather than skipping it.
    pub fn start() -> Chrome {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing (run `cargo xtask deps`)"
        );
        let profile = tempfile::tempdir().expect("a profile directory");
        let args: Vec<&OsStr> = [
            "--disable-component-update",
            "--disable-background-networking",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--disable-default-apps",
            "--hide-scrollbars",
        ]
        .iter()
        .map(OsStr::new)
        .collect();
        let opts = LaunchOptions {
            headless: true,
            sandbox: false,
            enable_gpu: false,
            window_size: Some((WIDTH, HEIGHT)),
            path: Some(PathBuf::from(CHROMIUM)),
            user_data_dir: Some(profile.path().to_path_buf()),
            args,
            idle_browser_timeout: Duration::from_secs(300),
            ..LaunchOptions::default()
        };
        let browser = Browser::new(opts).expect("starting headless Chromium");
        let tab = browser.new_tab().expect("a tab");
        tab.set_default_timeout(Duration::from_secs(60));
        Chrome {
            tab,
            browser,
            _profile: profile,
        }
    }

    /// Opens `url` and waits until the page has drawn it.
    pub fn open(&self, url: &str) {
        self.tab.navigate_to(url).expect("navigating");
        self.tab.wait_until_navigated().expect("navigation");
        self.wait_ready();
    }

    /// Evaluates `expr` (may be a promise) and returns its JSON value.
    pub fn eval(&self, expr: &str) -> Value {
        let wrapped = format!("(async () => JSON.stringify(await ({expr})))()");
        let r = self
            .tab
            .evaluate(&wrapped, true)
            .unwrap_or_else(|e| panic!("evaluating {expr}: {e}"));
        match r.value {
            Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::Null),
            other => panic!("evaluating {expr}: {other:?} ({:?})", r.description),
        }
    }

    /// Waits until the page says it is done (`body[data-state]`), failing
    /// on an error it shows.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let state = self.eval("document.body ? document.body.dataset.state : 'none'");
            match state.as_str() {
                Some("ready") => return,
                Some("error") => panic!(
                    "the page shows an error: {}",
                    self.eval("document.getElementById('messages').innerText")
                ),
                _ => {}
            }
            assert!(Instant::now() < deadline, "page never got ready: {state}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks at a page position with a real mouse event.
    pub fn click(&self, x: f64, y: f64) {
        self.tab.click_point(Point { x, y }).expect("clicking");
    }

    /// The drawn flame graph frames of canvas `id`.
    pub fn frames(&self, id: &str) -> Vec<Frame> {
        let v = self.eval(&format!("window.rprof.frames('{id}')"));
        v.as_array()
            .expect("frames")
            .iter()
            .map(|f| Frame {
                name: f["name"].as_str().unwrap_or("").to_string(),
                depth: f["depth"].as_u64().unwrap_or(0),
                x: f["x"].as_f64().unwrap_or(0.0),
                y: f["y"].as_f64().unwrap_or(0.0),
                w: f["w"].as_f64().unwrap_or(0.0),
                h: f["h"].as_f64().unwrap_or(0.0),
                value: f["value"].as_i64().unwrap_or(0),
                base: f["base"].as_i64().unwrap_or(0),
                matched: f["matched"].as_bool().unwrap_or(false),
                ancestor: f["ancestor"].as_bool().unwrap_or(false),
            })
            .collect()
    }

    /// The colour drawn at a page position of the canvas in `container`.
    pub fn pixel(&self, container: &str, x: f64, y: f64) -> [u8; 3] {
        let v = self.eval(&format!(
            "(() => {{ const c = document.querySelector('#{container} canvas'); \
             const r = c.getBoundingClientRect(); const k = c.width / r.width; \
             const d = c.getContext('2d').getImageData(Math.round(({x} - r.left) * k), \
             Math.round(({y} - r.top) * k), 1, 1).data; return [d[0], d[1], d[2]]; }})()"
        ));
        let p: Vec<u8> = v
            .as_array()
            .expect("a pixel")
            .iter()
            .map(|c| c.as_u64().unwrap_or(0) as u8)
            .collect();
        [p[0], p[1], p[2]]
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        self.tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("a screenshot")
    }

    /// The page's URL query.
    pub fn query(&self) -> String {
        self.eval("location.search")
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// A flame graph frame as the page drew it (page coordinates, CSS px).
#[derive(Clone, Debug)]
pub struct Frame {
    pub name: String,
    pub depth: u64,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub value: i64,
    pub base: i64,
    pub matched: bool,
    pub ancestor: bool,
}

impl Frame {
    pub fn center(&self) -> (f64, f64) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }
}

/// Mean and variance of the grey levels of a PNG within `area` (x, y, w,
/// h in pixels; the whole image when None), and the image's size.
pub fn png_stats(png: &[u8], area: Option<(u32, u32, u32, u32)>) -> (f64, f64, u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    let channels = info.color_type.samples();
    let bytes = &buf[..info.buffer_size()];
    let (ax, ay, aw, ah) = area.unwrap_or((0, 0, info.width, info.height));
    let grey: Vec<f64> = bytes
        .chunks(channels)
        .enumerate()
        .filter(|(i, _)| {
            let (x, y) = (*i as u32 % info.width, *i as u32 / info.width);
            x >= ax && x < ax + aw && y >= ay && y < ay + ah
        })
        .map(|(_, p)| {
            let rgb = &p[..channels.min(3)];
            rgb.iter().map(|&c| f64::from(c)).sum::<f64>() / rgb.len() as f64
        })
        .collect();
    let n = grey.len() as f64;
    let mean = grey.iter().sum::<f64>() / n;
    let var = grey.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
    (mean, var, info.width, info.height)
}
