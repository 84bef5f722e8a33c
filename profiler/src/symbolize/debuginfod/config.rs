//! Which servers to ask, for how long, and where the cache is: the
//! environment variables elfutils' client reads, with the same meanings,
//! so that a shell set up for gdb or perf is set up for us.

use std::path::PathBuf;
use std::time::Duration;

/// The error of a URL that does not parse (the `url` crate's, through
/// reqwest, which re-exports the URL type but not its error).
pub type UrlParseError = <reqwest::Url as std::str::FromStr>::Err;

/// elfutils' default for `DEBUGINFOD_TIMEOUT`, in seconds.
const DEFAULT_TIMEOUT_SECS: u64 = 90;

/// A setting that cannot be used: a usage error (exit code 2) that names it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin} entry {url:?} is not an http:// or https:// URL")]
    NotHttp { origin: &'static str, url: String },
    #[error("{origin} entry {url:?} is not a URL: {source}")]
    BadUrl {
        origin: &'static str,
        url: String,
        #[source]
        source: UrlParseError,
    },
    #[error("DEBUGINFOD_TIMEOUT={0:?} is not a whole number of seconds")]
    BadTimeout(String),
    #[error("no debuginfod server given: give --debuginfod URL, or set DEBUGINFOD_URLS")]
    NoServers,
    #[error("no debuginfod cache directory: set DEBUGINFOD_CACHE_PATH, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
}

/// Everything the client needs to know before it asks anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Server URL prefixes, tried in order; no trailing slash.
    pub servers: Vec<String>,
    /// A server that sends less than 100 KiB in this long is given up
    /// (`DEBUGINFOD_TIMEOUT`; `None`: no limit, as 0 means to elfutils).
    pub timeout: Option<Duration>,
    /// `DEBUGINFOD_CACHE_PATH`, or its default.
    pub cache_dir: PathBuf,
}

/// The process environment, as a function so tests can supply their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The real environment; unset and empty are the same, as for elfutils.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Servers from `DEBUGINFOD_URLS`; `None` if it is unset or empty.
    pub fn from_env(env: Env<'_>) -> Result<Option<Config>, ConfigError> {
        match env("DEBUGINFOD_URLS") {
            None => Ok(None),
            Some(urls) => {
                let list: Vec<&str> = urls
                    .split_whitespace()
                    .filter(|u| !is_policy_token(u))
                    .collect();
                if list.is_empty() {
                    return Ok(None);
                }
                Self::build(&list, "DEBUGINFOD_URLS", env).map(Some)
            }
        }
    }

    /// The servers given on the command line (`--debuginfod URL`, which
    /// replace `DEBUGINFOD_URLS`); the timeout and cache still come from
    /// the environment.
    pub fn from_urls(urls: &[String], env: Env<'_>) -> Result<Config, ConfigError> {
        let list: Vec<&str> = urls.iter().map(String::as_str).collect();
        Self::build(&list, "--debuginfod", env)
    }

    /// The record command's `--debuginfod [URL]`: the URLs given, else
    /// `DEBUGINFOD_URLS`, which must then be set.
    pub fn for_flag(urls: &[String], env: Env<'_>) -> Result<Config, ConfigError> {
        if urls.is_empty() {
            Self::from_env(env)?.ok_or(ConfigError::NoServers)
        } else {
            Self::from_urls(urls, env)
        }
    }

    fn build(urls: &[&str], origin: &'static str, env: Env<'_>) -> Result<Config, ConfigError> {
        let servers: Vec<String> = urls
            .iter()
            .filter(|u| !is_policy_token(u))
            .map(|u| server_url(u, origin))
            .collect::<Result<_, _>>()?;
        if servers.is_empty() {
            return Err(ConfigError::NoServers);
        }
        Ok(Config {
            servers,
            timeout: timeout(env)?,
            cache_dir: cache_dir(env)?,
        })
    }
}

/// elfutils' IMA policy tokens (`ima:enforcing`, `ima:permissive`,
/// `ima:ignore`), which Fedora's default `DEBUGINFOD_URLS` puts between its
/// servers. They are skipped: we check no IMA signatures (every file's
/// build ID is checked instead), and they name no server.
fn is_policy_token(s: &str) -> bool {
    s.starts_with("ima:")
}

/// One server prefix, checked: http or https, and a host.
fn server_url(s: &str, origin: &'static str) -> Result<String, ConfigError> {
    let parsed = reqwest::Url::parse(s).map_err(|source| ConfigError::BadUrl {
        origin,
        url: s.to_owned(),
        source,
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ConfigError::NotHttp {
            origin,
            url: s.to_owned(),
        });
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// `DEBUGINFOD_TIMEOUT` in seconds; 0 or negative: no timeout.
fn timeout(env: Env<'_>) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = env("DEBUGINFOD_TIMEOUT") else {
        return Ok(Some(Duration::from_secs(DEFAULT_TIMEOUT_SECS)));
    };
    let secs: i64 = v
        .trim()
        .parse()
        .map_err(|_| ConfigError::BadTimeout(v.clone()))?;
    Ok((secs > 0).then(|| Duration::from_secs(secs.unsigned_abs())))
}

/// Where elfutils keeps its cache: `DEBUGINFOD_CACHE_PATH`; else the
/// legacy `$HOME/.debuginfod_client_cache` if it exists; else
/// `$XDG_CACHE_HOME/debuginfod_client`, or `$HOME/.cache/debuginfod_client`.
fn cache_dir(env: Env<'_>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = env("DEBUGINFOD_CACHE_PATH") {
        return Ok(PathBuf::from(p));
    }
    let home = env("HOME").map(PathBuf::from);
    if let Some(legacy) = home.as_ref().map(|h| h.join(".debuginfod_client_cache")) {
        if legacy.is_dir() {
            return Ok(legacy);
        }
    }
    let base = match env("XDG_CACHE_HOME") {
        Some(xdg) => PathBuf::from(xdg),
        None => home.ok_or(ConfigError::NoCacheDir)?.join(".cache"),
    };
    Ok(base.join("debuginfod_client"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| map.get(k).cloned().filter(|v| !v.is_empty())
    }

    #[test]
    fn urls_split_on_spaces_in_order_and_lose_trailing_slashes() {
        let env = env_of(&[
            (
                "DEBUGINFOD_URLS",
                " https://a.example/  http://127.0.0.1:8002 ",
            ),
            ("HOME", "/home/u"),
        ]);
        let c = Config::from_env(&env).unwrap().unwrap();
        assert_eq!(c.servers, ["https://a.example", "http://127.0.0.1:8002"]);
        assert_eq!(c.timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            c.cache_dir,
            PathBuf::from("/home/u/.cache/debuginfod_client")
        );
        assert_eq!(
            Config::from_env(&env_of(&[("DEBUGINFOD_URLS", "  ")])).unwrap(),
            None
        );
        assert_eq!(Config::from_env(&env_of(&[])).unwrap(), None);
        // Fedora's default, with elfutils' IMA policy tokens.
        let fedora = "ima:enforcing https://debuginfod.fedoraproject.org/ ima:ignore";
        let env = env_of(&[("DEBUGINFOD_URLS", fedora), ("HOME", "/h")]);
        let c = Config::from_env(&env).unwrap().unwrap();
        assert_eq!(c.servers, ["https://debuginfod.fedoraproject.org"]);
        let env = env_of(&[("DEBUGINFOD_URLS", "ima:ignore"), ("HOME", "/h")]);
        assert_eq!(Config::from_env(&env).unwrap(), None);
    }

    #[test]
    fn a_url_that_is_not_http_is_named() {
        let env = env_of(&[("DEBUGINFOD_URLS", "http://ok.example ftp://bad.example/x")]);
        let e = Config::from_env(&env).unwrap_err();
        assert!(matches!(e, ConfigError::NotHttp { .. }));
        assert_eq!(
            e.to_string(),
            "DEBUGINFOD_URLS entry \"ftp://bad.example/x\" is not an http:// or https:// URL"
        );
        let e = Config::from_urls(&["file:///srv".into()], &env_of(&[("HOME", "/h")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--debuginfod entry \"file:///srv\""),
            "{e}"
        );
        let e = Config::from_urls(&["debuginfod.example".into()], &env_of(&[("HOME", "/h")]))
            .unwrap_err();
        assert!(matches!(e, ConfigError::BadUrl { .. }), "{e}");
    }

    #[test]
    fn timeout_and_cache_follow_elfutils() {
        let with = |pairs: &[(&str, &str)]| {
            let mut all = vec![("DEBUGINFOD_URLS", "http://s")];
            all.extend_from_slice(pairs);
            Config::from_env(&env_of(&all)).map(Option::unwrap)
        };
        let c = with(&[("DEBUGINFOD_TIMEOUT", "5"), ("DEBUGINFOD_CACHE_PATH", "/c")]).unwrap();
        assert_eq!(
            (c.timeout, c.cache_dir),
            (Some(Duration::from_secs(5)), "/c".into())
        );
        assert_eq!(
            with(&[("DEBUGINFOD_TIMEOUT", "0"), ("HOME", "/h")])
                .unwrap()
                .timeout,
            None
        );
        assert_eq!(
            with(&[("DEBUGINFOD_TIMEOUT", "-1"), ("HOME", "/h")])
                .unwrap()
                .timeout,
            None
        );
        assert!(matches!(
            with(&[("DEBUGINFOD_TIMEOUT", "soon"), ("HOME", "/h")]),
            Err(ConfigError::BadTimeout(_))
        ));
        let c = with(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]).unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/x/debuginfod_client"));
        assert!(matches!(with(&[]), Err(ConfigError::NoCacheDir)));

        // An existing legacy cache wins over the XDG one, as in elfutils.
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".debuginfod_client_cache")).unwrap();
        let h = home.path().to_str().unwrap();
        let c = with(&[("XDG_CACHE_HOME", "/x"), ("HOME", h)]).unwrap();
        assert_eq!(c.cache_dir, home.path().join(".debuginfod_client_cache"));
    }

    #[test]
    fn the_record_flag_falls_back_to_the_environment() {
        let env = env_of(&[("DEBUGINFOD_URLS", "http://env"), ("HOME", "/h")]);
        assert_eq!(Config::for_flag(&[], &env).unwrap().servers, ["http://env"]);
        let given = Config::for_flag(&["https://flag/".into()], &env).unwrap();
        assert_eq!(given.servers, ["https://flag"]);
        assert!(matches!(
            Config::for_flag(&[], &env_of(&[("HOME", "/h")])),
            Err(ConfigError::NoServers)
        ));
    }
}
